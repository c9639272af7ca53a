//! Interlaced frames as their two fields: the lines each field holds, in the order they were
//! taken. A field is a picture of its own, half a frame period after the one before, whose
//! pixels are displayed twice as tall; restored faces go back into its lines only.

use super::given::{FaceSource, GivenFace};
use super::layout::{FrameLayout, Planes, PlanesMut};
use crate::detect::Face;

/// One field of a frame: its lines as a picture of their own, in the frame's planes (`offset`
/// bytes into the first plane: the RGB family's second line; the other layouts place each
/// plane's lines themselves).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Field {
    pub offset: usize,
    pub layout: FrameLayout,
    /// The field of the frame's even lines (0, 2, 4, …).
    pub top: bool,
}

impl Field {
    /// The planes of the field inside the frame's planes.
    pub fn of<'a>(&self, frame: impl Into<Planes<'a>>) -> Planes<'a> {
        let mut planes = frame.into();
        planes.0[0] = planes.0[0].get(self.offset..).unwrap_or(&[]);
        planes
    }

    /// As [`of`](Self::of), to write the field's lines.
    pub fn of_mut<'a>(&self, frame: impl Into<PlanesMut<'a>>) -> PlanesMut<'a> {
        let mut planes = frame.into();
        let first = std::mem::take(&mut planes.0[0]);
        planes.0[0] = first.get_mut(self.offset..).unwrap_or(&mut []);
        planes
    }

    /// A line `y` of the frame as a line of the field.
    pub fn field_y(&self, y: f32) -> f32 {
        (y - if self.top { 0.0 } else { 1.0 }) / 2.0
    }

    /// Faces given in the frame's pixels (metadata), in the field's.
    pub fn source_in_field(&self, source: &FaceSource) -> FaceSource {
        let map = |given: &[GivenFace]| -> Vec<GivenFace> {
            given
                .iter()
                .map(|g| {
                    let [x1, y1, x2, y2] = g.bbox;
                    GivenFace {
                        bbox: [x1, self.field_y(y1), x2, self.field_y(y2)],
                        score: g.score,
                        landmarks: g.landmarks.map(|l| l.map(|[x, y]| [x, self.field_y(y)])),
                    }
                })
                .collect()
        };
        match source {
            FaceSource::Detector => FaceSource::Detector,
            FaceSource::Given(g) => FaceSource::Given(map(g)),
            FaceSource::Both(g) => FaceSource::Both(map(g)),
        }
    }
}

/// A line `y` of the `top` field or the other (in field pixels, fractional) as a line of the frame.
fn frame_y(top: bool, y: f32) -> f32 {
    2.0 * y + if top { 0.0 } else { 1.0 }
}

/// A face found in the `top` field or the other, in the frame's pixels (what messages and metas
/// describe).
pub fn face_in_frame(top: bool, f: &Face) -> Face {
    let [x1, y1, x2, y2] = f.bbox;
    Face { bbox: [x1, frame_y(top, y1), x2, frame_y(top, y2)], score: f.score, landmarks: f.landmarks.map(|[x, y]| [x, frame_y(top, y)]) }
}

/// The field of a frame of `layout` that holds its even lines (`top`) or its odd ones; `None`
/// when the frame has no such line.
pub fn field(layout: &FrameLayout, top: bool) -> Option<Field> {
    let first = if top { 0 } else { 1 };
    let offset = match layout {
        FrameLayout::Rgb(l) => first * l.stride,
        FrameLayout::Yuv(_) => 0,
    };
    Some(Field { offset, layout: layout.field(first)?, top })
}

/// The two fields of a frame of `layout`, in temporal order (`top_first`: the even lines were
/// taken first); `None` for a frame of one line, which holds one field only, and for one whose
/// chroma rows do not divide into its fields'.
pub fn fields(layout: &FrameLayout, top_first: bool) -> Option<[Field; 2]> {
    let (top, bottom) = (field(layout, true)?, field(layout, false)?);
    Some(if top_first { [top, bottom] } else { [bottom, top] })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::restorer::PackedLayout;

    #[test]
    fn fields_hold_alternate_lines_in_temporal_order() {
        // 3 x 5 RGB frame; byte value = line number.
        let layout = FrameLayout::Rgb(PackedLayout::rgb(3, 5));
        let frame: Vec<u8> = (0..5u8).flat_map(|y| [y; 9]).collect();
        let [first, second] = fields(&layout, false).unwrap();
        assert!(!first.top && second.top, "bottom field first");
        let FrameLayout::Rgb(field_layout) = first.layout else { unreachable!() };
        let lines = |f: &Field| -> Vec<u8> {
            let data = f.of(&frame);
            f.layout.check(data.lens()).unwrap();
            (0..f.layout.height()).map(|y| data.0[0][y * field_layout.stride]).collect()
        };
        assert_eq!((lines(&second), lines(&first)), (vec![0, 2, 4], vec![1, 3]));
        assert_eq!((frame_y(second.top, 2.0), frame_y(first.top, 1.0)), (4.0, 3.0));
        assert_eq!((second.field_y(4.0), first.field_y(3.0)), (2.0, 1.0));
        // Writing a field touches its lines only.
        let mut out = frame.clone();
        let f = fields(&layout, true).unwrap()[1];
        for y in 0..f.layout.height() {
            f.of_mut(&mut out).0[0][y * field_layout.stride] = 99;
        }
        assert_eq!(out.iter().step_by(9).copied().collect::<Vec<_>>(), vec![0, 99, 2, 99, 4]);
        assert!(fields(&FrameLayout::Rgb(PackedLayout::rgb(3, 1)), true).is_none());
    }
}
