//! Frames in memory: the byte layout of a packed 8-bit RGB-family frame, the one upload of a
//! frame to the device, and the writes back. The only `unsafe` code of the core is here: views
//! of the caller's bytes as tensors, after their layout was checked against the buffer.
//! Frames go up and down through [`crate::transfer`], which counts the copies.

use tch::{Device, Kind, Tensor};

use crate::error::Error;
use crate::transfer;

/// Where the colour channels of a packed 8-bit RGB-like frame are, and how rows are laid out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PackedLayout {
    pub width: usize,
    pub height: usize,
    /// Bytes from one row to the next (at least `width * pixel_stride`).
    pub stride: usize,
    /// Bytes per pixel: 3 or 4.
    pub pixel_stride: usize,
    /// Byte offsets of R, G and B inside a pixel.
    pub rgb_offsets: [usize; 3],
}

impl PackedLayout {
    /// A tightly packed RGB frame.
    pub fn rgb(width: usize, height: usize) -> Self {
        PackedLayout { width, height, stride: width * 3, pixel_stride: 3, rgb_offsets: [0, 1, 2] }
    }

    /// Checks that every pixel of the layout lies inside a buffer of `len` bytes.
    pub fn check(&self, len: usize) -> Result<(), Error> {
        let row = self.width.checked_mul(self.pixel_stride);
        let ok = self.width > 0
            && self.height > 0
            && self.rgb_offsets.iter().all(|&o| o < self.pixel_stride)
            && row.is_some_and(|r| r <= self.stride)
            && (self.height - 1).checked_mul(self.stride).and_then(|b| b.checked_add(row?)).is_some_and(|n| n <= len);
        if ok {
            Ok(())
        } else {
            Err(Error::BufferTooSmall { have: len, layout: format!("{self:?}") })
        }
    }

    /// `(width, height)` as tensor sizes.
    pub fn size(&self) -> (i64, i64) {
        (self.width as i64, self.height as i64)
    }

    fn channels(&self) -> Result<Tensor, Error> {
        Ok(Tensor::f_from_slice(&self.rgb_offsets.map(|o| o as i64))?)
    }
}

/// Packed 8-bit frame memory as a `H x W x pixel_stride` tensor over the same bytes.
///
/// # Safety
/// `layout.check(len)` must have passed for the memory at `ptr`, which must stay valid and
/// must not be written through other paths while the tensor is used.
unsafe fn view(ptr: *const u8, layout: &PackedLayout) -> Result<Tensor, Error> {
    Ok(Tensor::f_from_blob(
        ptr,
        &[layout.height as i64, layout.width as i64, layout.pixel_stride as i64],
        &[layout.stride as i64, layout.pixel_stride as i64, 1],
        Kind::Uint8,
        Device::Cpu,
    )?)
}

/// The frame's R, G, B bytes as a float `1 x 3 x H x W` tensor (0..255) on `device`: the one
/// upload of a frame. The bytes are gathered into a pinned buffer when uploading to CUDA, so
/// the copy does not wait for the device.
pub fn to_tensor(data: &[u8], layout: &PackedLayout, device: Device) -> Result<Tensor, Error> {
    layout.check(data.len())?;
    let _guard = tch::no_grad_guard();
    // SAFETY: checked above; `data` is borrowed for the whole function and only read.
    let bytes = unsafe { view(data.as_ptr(), layout)? };
    let rgb = bytes.f_index_select(2, &layout.channels()?)?; // a copy: the view is not kept
    let rgb = transfer::upload_pinned(&rgb, device)?;
    Ok(rgb.f_permute([2, 0, 1])?.f_unsqueeze(0)?.f_to_kind(Kind::Float)?)
}

/// A float `1 x 3 x H x W` image (0..255) as `H x W x 3` bytes on the host, rounded and
/// saturated (cv2.convertScaleAbs): one download.
pub fn to_bytes(image: &Tensor) -> Result<Tensor, Error> {
    download_rgb(&quantize(image)?)
}

/// `1 x 3 x H x W` 0..255 values as the bytes they are written as (rounded, saturated), still on
/// the device.
pub fn quantize(image: &Tensor) -> Result<Tensor, Error> {
    Ok(image.f_round()?.f_clamp(0.0, 255.0)?.f_to_kind(Kind::Uint8)?)
}

/// [`quantize`]d bytes down to the host as `H x W x 3`.
pub fn download_rgb(bytes: &Tensor) -> Result<Tensor, Error> {
    Ok(transfer::download(&bytes.f_squeeze_dim(0)?.f_permute([1, 2, 0])?)?)
}

/// Writes `H x W x 3` host bytes into the R, G, B bytes of the frame's rectangle at `(x0, y0)`;
/// with `fill`, the other bytes of the frame's pixels (alpha, padding) become 255 first.
pub fn write_rgb(rgb: &Tensor, (x0, y0): (i64, i64), data: &mut [u8], layout: &PackedLayout, fill: bool) -> Result<(), Error> {
    layout.check(data.len())?;
    let (h, w) = (rgb.size()[0], rgb.size()[1]);
    let (fw, fh) = layout.size();
    if rgb.size().len() != 3 || rgb.size()[2] != 3 || x0 < 0 || y0 < 0 || x0 + w > fw || y0 + h > fh {
        return Err(Error::OutputMismatch(format!("a {:?} patch at ({x0}, {y0}) does not fit a {fw}x{fh} frame", rgb.size())));
    }
    // SAFETY: `check` proved every index of the view lies in `data`, exclusively borrowed here.
    let mut all = unsafe { view(data.as_mut_ptr(), layout)? };
    if fill && layout.pixel_stride > 3 {
        let _ = all.f_fill_(255)?;
    }
    let mut patch = all.f_narrow(0, y0, h)?.f_narrow(1, x0, w)?;
    let _ = patch.f_index_copy_(2, &layout.channels()?, rgb)?;
    Ok(())
}

/// Writes a whole float `1 x 3 x H x W` frame (rounded, saturated); other bytes become 255.
pub fn write_frame(frame: &Tensor, data: &mut [u8], layout: &PackedLayout) -> Result<(), Error> {
    write_rgb(&to_bytes(frame)?, (0, 0), data, layout, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A BGRx-like frame with padded rows: pixel (x, y) has R = x, G = y, B = x + y.
    fn padded(width: usize, height: usize) -> (Vec<u8>, PackedLayout) {
        let layout = PackedLayout { width, height, stride: width * 4 + 8, pixel_stride: 4, rgb_offsets: [2, 1, 0] };
        let mut data = vec![7u8; layout.stride * height];
        for y in 0..height {
            for x in 0..width {
                let p = y * layout.stride + x * 4;
                data[p + 2] = x as u8;
                data[p + 1] = y as u8;
                data[p] = (x + y) as u8;
            }
        }
        (data, layout)
    }

    #[test]
    fn layouts_that_overrun_the_buffer_are_refused() {
        let ok = PackedLayout::rgb(4, 3);
        assert!(ok.check(36).is_ok());
        assert!(ok.check(35).is_err());
        // The last row needs only its pixels, not a whole stride.
        let padded = PackedLayout { stride: 16, ..ok };
        assert!(padded.check(2 * 16 + 12).is_ok());
        assert!(padded.check(2 * 16 + 11).is_err());
        assert!(PackedLayout { stride: 11, ..ok }.check(100).is_err(), "stride shorter than a row");
        assert!(PackedLayout { rgb_offsets: [0, 1, 3], ..ok }.check(100).is_err(), "offset outside the pixel");
        assert!(PackedLayout { width: 0, ..ok }.check(100).is_err());
        let huge = PackedLayout { width: usize::MAX / 2, height: 3, stride: usize::MAX, pixel_stride: 3, rgb_offsets: [0, 1, 2] };
        assert!(huge.check(100).is_err(), "overflow must not pass");
        assert!(matches!(ok.check(1), Err(Error::BufferTooSmall { have: 1, .. })));
    }

    #[test]
    fn upload_reads_channels_by_offset_and_skips_padding() {
        let (data, layout) = padded(5, 3);
        let t = to_tensor(&data, &layout, Device::Cpu).unwrap();
        assert_eq!(t.size(), [1, 3, 3, 5]);
        assert_eq!(t.kind(), Kind::Float);
        let at = |c: i64, y: i64, x: i64| t.double_value(&[0, c, y, x]);
        assert_eq!((at(0, 2, 4), at(1, 2, 4), at(2, 2, 4)), (4.0, 2.0, 6.0));
        assert_eq!((at(0, 1, 0), at(1, 1, 0), at(2, 1, 0)), (0.0, 1.0, 1.0));
    }

    #[test]
    fn writes_round_trip_and_leave_the_rest_alone() {
        let (data, layout) = padded(6, 4);
        let frame = to_tensor(&data, &layout, Device::Cpu).unwrap();
        // A whole frame written back gives the same colour bytes, alpha 255, padding untouched.
        let mut out = vec![0u8; data.len()];
        write_frame(&(frame.shallow_clone() + 0.4), &mut out, &layout).unwrap();
        for y in 0..4 {
            let row = &out[y * layout.stride..][..layout.stride];
            for x in 0..6 {
                let p = &row[x * 4..x * 4 + 4];
                assert_eq!(p, [(x + y) as u8, y as u8, x as u8, 255], "pixel ({x}, {y})");
            }
            assert_eq!(&row[24..], [0u8; 8], "row padding written");
        }
        // A patch changes its rectangle only.
        let mut out = data.clone();
        let patch = Tensor::full([2, 3, 3], 200, (Kind::Uint8, Device::Cpu));
        write_rgb(&patch, (2, 1), &mut out, &layout, false).unwrap();
        for y in 0..4 {
            for x in 0..6 {
                let p = y * layout.stride + x * 4;
                let inside = (2..5).contains(&x) && (1..3).contains(&y);
                if inside {
                    assert_eq!(out[p..p + 3], [200, 200, 200]);
                } else {
                    assert_eq!(out[p..p + 3], data[p..p + 3]);
                }
                assert_eq!(out[p + 3], 7, "the fourth byte is kept");
            }
        }
        // Values saturate instead of wrapping.
        let mut out = vec![0u8; data.len()];
        write_frame(&(frame * 100.0 - 50.0), &mut out, &layout).unwrap();
        assert_eq!(out[layout.stride + 16..layout.stride + 19], [255, 50, 255], "B, G, R of pixel (4, 1)");
        assert_eq!(out[0..3], [0, 0, 0]);
    }

    #[test]
    fn patches_outside_the_frame_are_refused() {
        let (mut data, layout) = padded(6, 4);
        let patch = Tensor::zeros([2, 3, 3], (Kind::Uint8, Device::Cpu));
        assert!(matches!(write_rgb(&patch, (4, 0), &mut data, &layout, false), Err(Error::OutputMismatch(_))));
        assert!(matches!(write_rgb(&patch, (0, 3), &mut data, &layout, false), Err(Error::OutputMismatch(_))));
        assert!(matches!(write_rgb(&patch, (-1, 0), &mut data, &layout, false), Err(Error::OutputMismatch(_))));
    }
}
