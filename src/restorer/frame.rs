//! Frames in memory: the one upload of a frame to the device, as R′G′B′, and the writes back
//! in the frame's own format, whole or a pasted region only. The only `unsafe` code of the
//! core is here: views of the caller's bytes as tensors, after their layout was checked against
//! the planes. Frames go up and down through [`crate::transfer`], which counts the copies: one
//! upload per frame, one download per write, whatever the number of planes.

use tch::{Device, Kind, Tensor};

use super::layout::{FrameLayout, PackedLayout, Planes, PlanesMut, Samples, YuvLayout};
use super::yuv;
use crate::error::Error;
use crate::transfer;

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

/// One component's samples as a `height x width` tensor over the plane's bytes (`Int16` for
/// two-byte samples, read little-endian: the host's order, see [`check`]).
///
/// # Safety
/// The layout holding `s` must have passed [`check`] for the plane at `ptr`, which must stay
/// valid and must not be written through other paths while the tensor is used.
unsafe fn samples_view(ptr: *const u8, s: &Samples) -> Result<Tensor, Error> {
    let (kind, b) = if s.wide { (Kind::Int16, 2) } else { (Kind::Uint8, 1) };
    let first = ptr.add(s.offset);
    // The check proved offsets and strides even; the plane itself must be too.
    if !(first as usize).is_multiple_of(b) {
        return Err(Error::OutputMismatch(format!("two-byte samples at an odd address ({first:p}): the plane is misaligned")));
    }
    Ok(Tensor::f_from_blob(first, &[s.height as i64, s.width as i64], &[(s.stride / b) as i64, (s.step / b) as i64], kind, Device::Cpu)?)
}

/// `layout` against the planes' lengths; two-byte samples need a little-endian host.
fn check(layout: &FrameLayout, lens: [usize; 4]) -> Result<(), Error> {
    if let FrameLayout::Yuv(l) = layout {
        if l.luma.wide && cfg!(target_endian = "big") {
            return Err(Error::OutputMismatch("little-endian samples on a big-endian host".into()));
        }
    }
    layout.check(lens)
}

fn channels(layout: &PackedLayout) -> Result<Tensor, Error> {
    Ok(Tensor::f_from_slice(&layout.rgb_offsets.map(|o| o as i64))?)
}

/// The frame as a float `1 x 3 x H x W` R′G′B′ tensor (0..255, whole levels) on `device`: the
/// one upload of a frame. Y′CbCr and grey frames go up as their samples and are converted
/// there, as `videoconvert` would to 8-bit RGB. The bytes are gathered into a pinned buffer
/// when uploading to CUDA, so the copy does not wait for the device.
pub fn to_tensor<'a>(planes: impl Into<Planes<'a>>, layout: impl Into<FrameLayout>, device: Device) -> Result<Tensor, Error> {
    let (planes, layout) = (planes.into(), layout.into());
    check(&layout, planes.lens())?;
    let _guard = tch::no_grad_guard();
    match &layout {
        FrameLayout::Rgb(l) => {
            // SAFETY: checked above; the planes are borrowed for the whole function and only read.
            let bytes = unsafe { view(planes.0[0].as_ptr(), l)? };
            let rgb = bytes.f_index_select(2, &channels(l)?)?; // a copy: the view is not kept
            let rgb = transfer::upload_pinned(&rgb, device)?;
            Ok(rgb.f_permute([2, 0, 1])?.f_unsqueeze(0)?.f_to_kind(Kind::Float)?)
        }
        FrameLayout::Yuv(l) => yuv_to_tensor(planes, l, device),
    }
}

/// The components of a Y′CbCr or grey frame: luma first.
fn components(l: &YuvLayout) -> Vec<Samples> {
    std::iter::once(l.luma).chain(l.chroma.into_iter().flatten()).collect()
}

fn yuv_to_tensor(planes: Planes<'_>, l: &YuvLayout, device: Device) -> Result<Tensor, Error> {
    let comps = components(l);
    let mut flat = Vec::with_capacity(comps.len());
    for s in &comps {
        // SAFETY: the caller checked the layout against these planes, borrowed and only read.
        let v = unsafe { samples_view(planes.0[s.plane].as_ptr(), s)? };
        flat.push(v.f_reshape([-1])?);
    }
    // One gathering copy (the views are not kept), one upload.
    let samples = transfer::upload_pinned(&Tensor::f_cat(&flat, 0)?, device)?;
    let codes = code_values(&samples, l.luma)?;
    let mut parts = Vec::with_capacity(comps.len());
    let mut start = 0;
    for s in &comps {
        let n = (s.width * s.height) as i64;
        parts.push(codes.f_narrow(0, start, n)?.f_reshape([1, 1, s.height as i64, s.width as i64])?);
        start += n;
    }
    let full = (l.height as i64, l.width as i64);
    let chroma = match &parts[..] {
        // Cb and Cr resampled together.
        [_, cb, cr] => Some(yuv::upsample(&Tensor::f_cat(&[cb, cr], 1)?, l.sub, l.siting, full)?),
        _ => None,
    };
    let matrix = transfer::upload_pinned(&Tensor::f_from_slice(&l.colorimetry.rgb_matrix())?, device)?;
    let mut rgb = l.colorimetry.to_rgb(&parts[0], chroma.as_ref(), &matrix)?;
    let _ = rgb.f_round_()?.f_clamp_(0.0, 255.0)?;
    Ok(rgb)
}

/// Samples as float code values: two-byte ones read unsigned and shifted down.
fn code_values(samples: &Tensor, s: Samples) -> Result<Tensor, Error> {
    if !s.wide {
        return Ok(samples.f_to_kind(Kind::Float)?);
    }
    let v = samples.f_to_kind(Kind::Int)?.f_bitwise_and(0xffff)?.f_bitwise_right_shift_tensor_scalar(s.shift as i64)?;
    Ok(v.f_to_kind(Kind::Float)?)
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
    let (fw, fh) = layout.size();
    let misfit = || Error::OutputMismatch(format!("a {:?} patch at ({x0}, {y0}) does not fit a {fw}x{fh} frame", rgb.size()));
    let [h, w, 3] = rgb.size()[..] else { return Err(misfit()) };
    if x0 < 0 || y0 < 0 || x0 + w > fw || y0 + h > fh {
        return Err(misfit());
    }
    // SAFETY: `check` proved every index of the view lies in `data`, exclusively borrowed here.
    let mut all = unsafe { view(data.as_mut_ptr(), layout)? };
    if fill && layout.pixel_stride > 3 {
        let _ = all.f_fill_(255)?;
    }
    let mut patch = all.f_narrow(0, y0, h)?.f_narrow(1, x0, w)?;
    let _ = patch.f_index_copy_(2, &channels(layout)?, rgb)?;
    Ok(())
}

/// Writes a whole float `1 x 3 x H x W` R′G′B′ frame (rounded, saturated) in the frame's
/// format; in the RGB family, other bytes become 255.
pub fn write_frame<'a>(frame: &Tensor, out: impl Into<PlanesMut<'a>>, layout: impl Into<FrameLayout>) -> Result<(), Error> {
    let (mut out, layout) = (out.into(), layout.into());
    check(&layout, out.lens())?;
    match &layout {
        FrameLayout::Rgb(l) => write_rgb(&to_bytes(frame)?, (0, 0), out.0[0], l, true),
        FrameLayout::Yuv(l) => {
            let (h, w) = (l.height as i64, l.width as i64);
            let rgb = frame.f_round()?.f_clamp(0.0, 255.0)?;
            let (y, chroma) = l.colorimetry.from_rgb(&rgb, l.chroma.is_none(), true)?;
            let mut values = vec![((0, 0), y)];
            if let Some((cb, cr)) = chroma {
                let sub = |c: &Tensor| yuv::subsample(c, (0, 0), (w, h), l.sub, l.siting);
                let ((_, cb), (_, cr)) = (sub(&cb)?, sub(&cr)?);
                values.extend([((0, 0), cb), ((0, 0), cr)]);
            }
            write_samples(&values, false, &mut out, l)
        }
    }
}

/// Writes faces composed over the frame rectangle at `(x0, y0)`: `bytes` (the composition as
/// [`quantize`]d, for the RGB family) or, for Y′CbCr and grey frames, the change from `under`
/// (the frame as uploaded there) to `image` (the composition, float) added to the samples.
/// Where the composition equals the frame, no sample changes; chroma samples shared with pixels
/// outside the rectangle take the change of their pixels inside it only.
pub fn write_pasted(
    (bytes, image, under): (&Tensor, &Tensor, &Tensor),
    (x0, y0): (i64, i64),
    mut out: PlanesMut<'_>,
    layout: &FrameLayout,
) -> Result<(), Error> {
    check(layout, out.lens())?;
    match layout {
        FrameLayout::Rgb(l) => write_rgb(&download_rgb(bytes)?, (x0, y0), out.0[0], l, false),
        FrameLayout::Yuv(l) => {
            let (h, w) = (l.height as i64, l.width as i64);
            let (dy, chroma) = l.colorimetry.from_rgb(&image.f_sub(under)?, l.chroma.is_none(), false)?;
            let mut changes = vec![((x0, y0), dy)];
            if let Some((cb, cr)) = chroma {
                let sub = |c: &Tensor| yuv::subsample(c, (x0, y0), (w, h), l.sub, l.siting);
                let ((rect, cb), (_, cr)) = (sub(&cb)?, sub(&cr)?);
                changes.extend([((rect.x0, rect.y0), cb), ((rect.x0, rect.y0), cr)]);
            }
            write_samples(&changes, true, &mut out, l)
        }
    }
}

/// Writes each component's `values` (`1 x 1 x h x w` float, on the device; luma, then Cb and
/// Cr) at their sample positions, rounded and saturated: new values, or (`add`) changes added
/// to the samples there. One download for all.
fn write_samples(values: &[((i64, i64), Tensor)], add: bool, out: &mut PlanesMut<'_>, l: &YuvLayout) -> Result<(), Error> {
    let flat: Vec<Tensor> = values.iter().map(|(_, v)| v.f_reshape([-1])).collect::<Result<_, _>>()?;
    let host = transfer::download(&Tensor::f_cat(&flat, 0)?.f_to_kind(Kind::Float)?)?;
    let max = l.colorimetry.max();
    let mut start = 0;
    for (s, ((cx, cy), v)) in components(l).iter().zip(values) {
        let (h, w) = (v.size()[2], v.size()[3]);
        if cx < &0 || cy < &0 || *cx + w > s.width as i64 || *cy + h > s.height as i64 {
            return Err(Error::OutputMismatch(format!("{w}x{h} samples at ({cx}, {cy}) outside {}x{}", s.width, s.height)));
        }
        let new = host.f_narrow(0, start, h * w)?.f_reshape([h, w])?;
        start += h * w;
        // SAFETY: the caller checked the layout against these planes, exclusively borrowed here.
        let all = unsafe { samples_view(out.0[s.plane].as_mut_ptr(), s)? };
        let mut rect = all.f_narrow(0, *cy, h)?.f_narrow(1, *cx, w)?;
        let new = if add { code_values(&rect, *s)?.f_add(&new)? } else { new };
        let new = new.f_round()?.f_clamp(0.0, max)?;
        let new = if s.wide {
            new.f_to_kind(Kind::Int)?.f_bitwise_left_shift_tensor_scalar(s.shift as i64)?.f_to_kind(Kind::Int16)?
        } else {
            new.f_to_kind(Kind::Uint8)?
        };
        rect.f_copy_(&new)?;
    }
    Ok(())
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
    fn upload_reads_channels_by_offset_and_skips_padding() {
        let (data, layout) = padded(5, 3);
        let t = to_tensor(&data, layout, Device::Cpu).unwrap();
        assert_eq!(t.size(), [1, 3, 3, 5]);
        assert_eq!(t.kind(), Kind::Float);
        let at = |c: i64, y: i64, x: i64| t.double_value(&[0, c, y, x]);
        assert_eq!((at(0, 2, 4), at(1, 2, 4), at(2, 2, 4)), (4.0, 2.0, 6.0));
        assert_eq!((at(0, 1, 0), at(1, 1, 0), at(2, 1, 0)), (0.0, 1.0, 1.0));
    }

    #[test]
    fn writes_round_trip_and_leave_the_rest_alone() {
        let (data, layout) = padded(6, 4);
        let frame = to_tensor(&data, layout, Device::Cpu).unwrap();
        // A whole frame written back gives the same colour bytes, alpha 255, padding untouched.
        let mut out = vec![0u8; data.len()];
        write_frame(&(frame.shallow_clone() + 0.4), &mut out, layout).unwrap();
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
        write_frame(&(frame * 100.0 - 50.0), &mut out, layout).unwrap();
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
