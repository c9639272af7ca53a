//! The byte layout of frames in memory: packed RGB-family frames, Y′CbCr frames (planar,
//! semi-planar, packed 4:2:2; 8 or 10 bits) and grey ones, each checked against the planes that
//! hold it before anything reads them; and the planes themselves, as the caller lends them.

use super::yuv::{Colorimetry, Siting, Subsampling};
use crate::error::Error;

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
}

/// Where the samples of one component (Y, Cb or Cr) lie in a frame's planes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Samples {
    /// The plane that holds them.
    pub plane: usize,
    /// Bytes from the plane's start to the first sample.
    pub offset: usize,
    /// Bytes from one row to the next.
    pub stride: usize,
    /// Bytes from one sample to the next in a row.
    pub step: usize,
    /// Samples per row, and rows.
    pub width: usize,
    pub height: usize,
    /// Two bytes per sample (little-endian) instead of one.
    pub wide: bool,
    /// Bits the value is shifted up by in its two bytes (P010: 6).
    pub shift: u32,
}

impl Samples {
    fn bytes(&self) -> usize {
        if self.wide {
            2
        } else {
            1
        }
    }

    /// Whether every sample lies inside a plane of `len` bytes, aligned for its size.
    fn fits(&self, len: usize) -> bool {
        let b = self.bytes();
        let aligned = !self.wide || (self.offset.is_multiple_of(2) && self.stride.is_multiple_of(2) && self.step.is_multiple_of(2));
        let last_row = self.width.checked_sub(1).and_then(|w| w.checked_mul(self.step)).and_then(|r| r.checked_add(b));
        let end = self
            .height
            .checked_sub(1)
            .and_then(|h| h.checked_mul(self.stride))
            .and_then(|s| s.checked_add(self.offset)?.checked_add(last_row?));
        // Rows must not overlap (packed 4:2:2's components share rows, each within its stride).
        let rows_apart = self.height == 1 || last_row.is_some_and(|r| r <= self.stride);
        self.width > 0 && self.height > 0 && self.step >= b && aligned && rows_apart && end.is_some_and(|e| e <= len)
    }

    /// The same samples, one row in every two from row `first` (a field's rows).
    fn every_other_row(&self, first: usize) -> Option<Samples> {
        let height = if first == 0 { self.height.div_ceil(2) } else { self.height / 2 };
        let offset = self.stride.checked_mul(first)?.checked_add(self.offset)?;
        (height > 0).then_some(Samples { offset, stride: self.stride.checked_mul(2)?, height, ..*self })
    }
}

/// A Y′CbCr or grey frame: its luma, its chroma (none for grey), how chroma is subsampled and
/// sited, and how its code values are read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct YuvLayout {
    pub width: usize,
    pub height: usize,
    pub luma: Samples,
    /// Cb and Cr.
    pub chroma: Option<[Samples; 2]>,
    pub sub: Subsampling,
    pub siting: Siting,
    pub colorimetry: Colorimetry,
}

impl YuvLayout {
    /// Chroma samples across and down.
    pub fn chroma_size(&self) -> (usize, usize) {
        (self.width.div_ceil(self.sub.0 as usize), self.height.div_ceil(self.sub.1 as usize))
    }

    fn check(&self, planes: &[usize; 4]) -> Result<(), Error> {
        let fits = |s: &Samples| planes.get(s.plane).is_some_and(|&len| s.fits(len)) && s.wide == (self.colorimetry.depth > 8);
        let sized = self.luma.width == self.width && self.luma.height == self.height;
        let chroma = match &self.chroma {
            None => true,
            Some(c) => c.iter().all(|s| fits(s) && (s.width, s.height) == self.chroma_size()),
        };
        let sub = [1, 2].contains(&self.sub.0) && [1, 2].contains(&self.sub.1);
        let depth = [8, 10].contains(&self.colorimetry.depth);
        if sized && fits(&self.luma) && chroma && sub && depth {
            Ok(())
        } else {
            Err(Error::BufferTooSmall { have: planes.iter().sum(), layout: format!("{self:?} in planes of {planes:?} bytes") })
        }
    }
}

/// How a frame lies in memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FrameLayout {
    Rgb(PackedLayout),
    Yuv(YuvLayout),
}

impl FrameLayout {
    pub fn width(&self) -> usize {
        match self {
            FrameLayout::Rgb(l) => l.width,
            FrameLayout::Yuv(l) => l.width,
        }
    }

    pub fn height(&self) -> usize {
        match self {
            FrameLayout::Rgb(l) => l.height,
            FrameLayout::Yuv(l) => l.height,
        }
    }

    /// `(width, height)` as tensor sizes.
    pub fn size(&self) -> (i64, i64) {
        (self.width() as i64, self.height() as i64)
    }

    /// Checks that every sample of the layout lies inside planes of the given lengths.
    pub fn check(&self, planes: [usize; 4]) -> Result<(), Error> {
        match self {
            FrameLayout::Rgb(l) => l.check(planes[0]),
            FrameLayout::Yuv(l) => l.check(&planes),
        }
    }

    /// The rows from `first` (0 or 1) on, one in two: a field of the frame, in the same planes
    /// (the RGB family's also needs plane 0 taken from `first * stride` on, see
    /// [`Field`](super::Field)). `None` when the field has no row, or when its chroma rows
    /// do not make the field's own chroma (4:2:0 frames of a height not divisible by 4).
    pub fn field(&self, first: usize) -> Option<FrameLayout> {
        match self {
            FrameLayout::Rgb(l) => {
                let height = if first == 0 { l.height.div_ceil(2) } else { l.height / 2 };
                (height > 0).then_some(FrameLayout::Rgb(PackedLayout { height, stride: l.stride.checked_mul(2)?, ..*l }))
            }
            FrameLayout::Yuv(l) => {
                let luma = l.luma.every_other_row(first)?;
                let chroma = match l.chroma {
                    None => None,
                    Some([cb, cr]) => Some([cb.every_other_row(first)?, cr.every_other_row(first)?]),
                };
                let field = YuvLayout { height: luma.height, luma, chroma, ..*l };
                let whole = chroma.is_none_or(|[cb, _]| cb.height == field.chroma_size().1);
                whole.then_some(FrameLayout::Yuv(field))
            }
        }
    }
}

impl From<PackedLayout> for FrameLayout {
    fn from(l: PackedLayout) -> Self {
        FrameLayout::Rgb(l)
    }
}

impl From<&PackedLayout> for FrameLayout {
    fn from(l: &PackedLayout) -> Self {
        FrameLayout::Rgb(*l)
    }
}

impl From<&FrameLayout> for FrameLayout {
    fn from(l: &FrameLayout) -> Self {
        *l
    }
}

/// A frame's planes, read: one for the RGB family and packed 4:2:2, up to three otherwise;
/// unused ones are empty.
#[derive(Debug, Clone, Copy)]
pub struct Planes<'a>(pub [&'a [u8]; 4]);

impl<'a> Planes<'a> {
    pub fn lens(&self) -> [usize; 4] {
        self.0.map(<[u8]>::len)
    }
}

impl<'a, D: AsRef<[u8]> + ?Sized> From<&'a D> for Planes<'a> {
    fn from(data: &'a D) -> Self {
        Planes([data.as_ref(), &[], &[], &[]])
    }
}

/// A frame's planes, to be written.
#[derive(Debug)]
pub struct PlanesMut<'a>(pub [&'a mut [u8]; 4]);

impl<'a> PlanesMut<'a> {
    pub fn lens(&self) -> [usize; 4] {
        [self.0[0].len(), self.0[1].len(), self.0[2].len(), self.0[3].len()]
    }

    /// The same planes, borrowed for less long.
    pub fn reborrow(&mut self) -> PlanesMut<'_> {
        PlanesMut(self.0.each_mut().map(|p| &mut **p))
    }

    /// The planes as read.
    pub fn as_planes(&self) -> Planes<'_> {
        Planes(self.0.each_ref().map(|p| &**p))
    }
}

impl<'a, D: AsMut<[u8]> + ?Sized> From<&'a mut D> for PlanesMut<'a> {
    fn from(data: &'a mut D) -> Self {
        PlanesMut([data.as_mut(), &mut [], &mut [], &mut []])
    }
}

impl<'a> From<[&'a mut [u8]; 4]> for PlanesMut<'a> {
    fn from(planes: [&'a mut [u8]; 4]) -> Self {
        PlanesMut(planes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restorer::yuv::Matrix;

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

    /// An NV12 frame of `w x h` with rows padded to `stride`: luma in plane 0, Cb Cr interleaved
    /// in plane 1.
    fn nv12(w: usize, h: usize, stride: usize) -> YuvLayout {
        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
        let s = |offset, step, width, height| Samples { plane: 0, offset, stride, step, width, height, wide: false, shift: 0 };
        YuvLayout {
            width: w,
            height: h,
            luma: s(0, 1, w, h),
            chroma: Some([Samples { plane: 1, ..s(0, 2, cw, ch) }, Samples { plane: 1, ..s(1, 2, cw, ch) }]),
            sub: (2, 2),
            siting: Siting::default(),
            colorimetry: Colorimetry { matrix: Matrix::BT709, full_range: false, depth: 8 },
        }
    }

    #[test]
    fn planar_layouts_are_checked_plane_by_plane() {
        let l = FrameLayout::Yuv(nv12(5, 3, 8));
        assert!(l.check([2 * 8 + 5, 8 + 6, 0, 0]).is_ok(), "odd sizes: 3 x 2 chroma samples");
        assert!(l.check([2 * 8 + 4, 8 + 6, 0, 0]).is_err(), "luma short by a byte");
        assert!(l.check([2 * 8 + 5, 8 + 5, 0, 0]).is_err(), "chroma short by a byte");
        assert!(l.check([2 * 8 + 5, 0, 0, 0]).is_err(), "no chroma plane");
        let FrameLayout::Yuv(mut wrong) = l else { unreachable!() };
        wrong.chroma.as_mut().unwrap()[0].width = 2;
        assert!(FrameLayout::Yuv(wrong).check([100, 100, 0, 0]).is_err(), "chroma of the wrong size");
        let mut overlapping = nv12(5, 3, 8);
        overlapping.luma.stride = 4;
        assert!(FrameLayout::Yuv(overlapping).check([100, 100, 0, 0]).is_err(), "rows closer than a row's samples");
        let mut wide = nv12(4, 2, 8);
        wide.colorimetry.depth = 10;
        assert!(FrameLayout::Yuv(wide).check([100, 100, 0, 0]).is_err(), "10 bits in one byte");
    }

    #[test]
    fn fields_of_planar_frames_take_every_other_row_of_each_plane() {
        let FrameLayout::Yuv(bottom) = FrameLayout::Yuv(nv12(6, 8, 8)).field(1).unwrap() else { unreachable!() };
        assert_eq!((bottom.height, bottom.luma.offset, bottom.luma.stride), (4, 8, 16));
        let [cb, cr] = bottom.chroma.unwrap();
        assert_eq!((cb.height, cb.offset, cr.offset, cb.stride), (2, 8, 9, 16));
        // 6 rows: 3 per field, whose 2 chroma rows the frame's 3 cannot give both fields.
        assert!(FrameLayout::Yuv(nv12(6, 6, 8)).field(1).is_none());
        assert!(FrameLayout::Yuv(nv12(6, 6, 8)).field(0).is_some());
        assert!(FrameLayout::Rgb(PackedLayout::rgb(3, 1)).field(1).is_none());
    }
}
