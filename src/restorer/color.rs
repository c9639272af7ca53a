//! The colour restored faces are pasted in (`color`): GPEN's own, the restored luminance only on
//! black-and-white faces, or the restored luminance with the source's chroma. Pure tensor
//! functions on the device (nothing is read back), of faces in aligned space or of a frame's
//! pasted region.
//!
//! GPEN's face prior was learned on colour photographs: it colourises grey faces, and on colour
//! footage it shifts skin and eye colours from frame to frame (chroma flicker).

use tch::{Kind, Tensor};

use super::settings::ColorMode;
use crate::error::Error;

/// A face whose source crop has no pixel whose channels lie further apart than this (levels)
/// is black and white: a grey frame stored as 8-bit RGB, or through a YUV round trip, keeps its
/// channels within a level or two of each other.
pub const GREY_TOLERANCE: f64 = 2.0;

/// The luma weights of R, G and B: BT.601's. The element's frames are RGB, which carries no
/// YCbCr matrix (what converted them from YUV upstream used one, and its caps no longer say
/// which); the step needs only a luma used consistently: `source` keeps the source's chroma
/// exactly under any weights (the difference of two lumas is added to all three channels), and
/// `auto` makes grey faces under any. BT.709's weights would move a restored face's grey by a
/// few levels, nothing more.
pub const LUMA: [f64; 3] = [0.299, 0.587, 0.114];

/// The luma of faces `x` (`N x 3 x S x S`, 0..255): `N x 1 x S x S`.
pub fn luma(x: &Tensor) -> Result<Tensor, Error> {
    let channel = |c: usize| x.f_narrow(1, c as i64, 1)?.f_mul_scalar(LUMA[c]);
    Ok(channel(0)?.f_add(&channel(1)?)?.f_add(&channel(2)?)?)
}

/// Per face of `x` (`N x 3 x S x S`), the largest difference between the channels of one of its
/// pixels, `max(|R - G|, |G - B|, |R - B|)`, in levels: `N`.
pub fn chroma_spread(x: &Tensor) -> Result<Tensor, Error> {
    let spread = x.f_amax([1].as_slice(), false)?.f_sub(&x.f_amin([1].as_slice(), false)?)?;
    Ok(spread.f_amax([1, 2].as_slice(), false)?)
}

/// Which of the faces `source` (`N x 3 x S x S`) are black and white (see [`GREY_TOLERANCE`]):
/// `N` booleans.
pub fn is_grey(source: &Tensor) -> Result<Tensor, Error> {
    Ok(chroma_spread(source)?.f_le(GREY_TOLERANCE)?)
}

/// The faces `restored` with their luma in all three channels: exactly R = G = B.
pub fn grey(restored: &Tensor) -> Result<Tensor, Error> {
    Ok(luma(restored)?.f_repeat([1, 3, 1, 1])?)
}

/// The luma of `restored` with the chroma of `source` (both `N x 3 x H x W`, 0..255: faces, or
/// the pasted region of a frame and the frame under it): `source` plus the difference of the
/// lumas in every channel. An RGB pixel is its luma plus a linear
/// function of its chroma, so this replaces the luma and keeps the chroma exactly (up to the
/// clamp to 0..255).
pub fn with_source_chroma(restored: &Tensor, source: &Tensor) -> Result<Tensor, Error> {
    let lift = luma(restored)?.f_sub(&luma(source)?)?;
    Ok(source.f_add(&lift)?.f_clamp(0.0, 255.0)?)
}

/// `auto`'s step on the faces `restored` (`N x 3 x S x S`, 0..255), restored from the crops
/// `source`: the black-and-white faces made grey (their luma in every channel), with which they
/// were (`N` booleans on the device). Under the other modes `restored` comes back as it is (the
/// very tensor) and no flags: `source` is applied in the frame, after the paste (see
/// [`with_source_chroma`]).
pub fn grey_faces(mode: ColorMode, restored: Tensor, source: &Tensor) -> Result<(Tensor, Option<Tensor>), Error> {
    if mode != ColorMode::Auto {
        return Ok((restored, None));
    }
    let bw = is_grey(source)?;
    let n = bw.size()[0];
    let out = grey(&restored)?.f_where_self(&bw.f_reshape([n, 1, 1, 1])?, &restored)?;
    Ok((out, Some(bw)))
}

/// `auto` on a frame upscaled by a network (convolutions mix the channels, so it may colour a
/// grey frame): `upscaled` made grey where the `frame` it was upscaled from (`1 x 3 x H x W`) is
/// black and white, as it is otherwise (decided on the device).
pub fn grey_frame(frame: &Tensor, upscaled: Tensor) -> Result<Tensor, Error> {
    let bw = is_grey(frame)?.f_reshape([1, 1, 1, 1])?;
    Ok(grey(&upscaled)?.f_where_self(&bw, &upscaled)?)
}

/// How many of `flags` (`N` booleans from [`grey_faces`]) are set among the faces `counted`: a
/// 0-dimensional tensor on their device.
pub fn count(flags: &Tensor, counted: &[bool]) -> Result<Tensor, Error> {
    if counted.iter().all(|&c| c) {
        return Ok(flags.f_sum(Kind::Int64)?);
    }
    let picked =
        counted.iter().enumerate().filter(|(_, &c)| c).map(|(i, _)| flags.f_narrow(0, i as i64, 1)).collect::<Result<Vec<_>, _>>()?;
    match picked.is_empty() {
        true => Ok(Tensor::f_zeros([], (Kind::Int64, flags.device()))?),
        false => Ok(Tensor::f_cat(&picked, 0)?.f_sum(Kind::Int64)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    const CPU: (Kind, Device) = (Kind::Float, Device::Cpu);

    /// Faces of random colours, `n x 3 x s x s`, 0..255.
    fn colour(n: i64, s: i64) -> Tensor {
        Tensor::rand([n, 3, s, s], CPU) * 255.0
    }

    /// Faces whose three channels are one random grey, `n x 3 x s x s`, whole levels.
    fn grey_faces_of(n: i64, s: i64) -> Tensor {
        (Tensor::rand([n, 1, s, s], CPU) * 255.0).round().repeat([1, 3, 1, 1])
    }

    fn max_abs(t: &Tensor) -> f64 {
        t.abs().max().double_value(&[])
    }

    fn channel(t: &Tensor, c: i64) -> Tensor {
        t.narrow(1, c, 1)
    }

    #[test]
    fn luma_weighs_the_channels_by_bt601_and_keeps_a_grey() {
        let px = |r: f32, g: f32, b: f32| Tensor::from_slice(&[r, g, b]).reshape([1, 3, 1, 1]);
        assert!((luma(&px(255.0, 0.0, 0.0)).unwrap().double_value(&[0, 0, 0, 0]) - 76.245).abs() < 1e-3);
        assert!((luma(&px(0.0, 0.0, 100.0)).unwrap().double_value(&[0, 0, 0, 0]) - 11.4).abs() < 1e-4);
        let g = grey_faces_of(2, 8);
        assert!(max_abs(&(luma(&g).unwrap() - channel(&g, 0))) < 1e-4, "a grey's luma is that grey");
    }

    #[test]
    fn the_spread_is_the_largest_channel_difference_of_any_pixel() {
        let faces = grey_faces_of(3, 8);
        let set = |face: i64, (y, x): (i64, i64), rgb: [f32; 3]| {
            faces.narrow(0, face, 1).narrow(2, y, 1).narrow(3, x, 1).copy_(&Tensor::from_slice(&rgb).reshape([1, 3, 1, 1]))
        };
        // Face 1: one pixel whose blue is 2 levels off (still grey); face 2: one 3 levels off.
        set(1, (4, 4), [100.0, 100.0, 102.0]);
        set(2, (5, 1), [100.0, 103.0, 101.0]);
        let spread: Vec<f32> = Vec::try_from(chroma_spread(&faces).unwrap()).unwrap();
        assert_eq!(spread[0], 0.0);
        assert_eq!(spread[1], 2.0);
        assert_eq!(spread[2], 3.0);
        let grey: Vec<bool> = Vec::try_from(is_grey(&faces).unwrap()).unwrap();
        assert_eq!(grey, [true, true, false]);
    }

    #[test]
    fn auto_pastes_grey_faces_as_luminance_only_and_colour_faces_as_restored() {
        let restored = colour(3, 16);
        // Faces 0 and 2 were restored from black-and-white crops, face 1 from a colour one.
        let source = Tensor::cat(&[grey_faces_of(1, 16), colour(1, 16), grey_faces_of(1, 16)], 0);
        let (out, bw) = grey_faces(ColorMode::Auto, restored.shallow_clone(), &source).unwrap();
        let bw = bw.unwrap();
        assert_eq!(Vec::<bool>::try_from(&bw).unwrap(), [true, false, true]);
        for i in [0, 2] {
            let face = out.narrow(0, i, 1);
            // Exactly: the same value in every channel, the restored face's luma.
            assert_eq!(max_abs(&(channel(&face, 0) - channel(&face, 1))), 0.0);
            assert_eq!(max_abs(&(channel(&face, 2) - channel(&face, 1))), 0.0);
            assert!(max_abs(&(channel(&face, 0) - luma(&restored.narrow(0, i, 1)).unwrap())) < 1e-4);
        }
        assert_eq!(max_abs(&(out.narrow(0, 1, 1) - restored.narrow(0, 1, 1))), 0.0, "a colour face as GPEN restored it");
        assert_eq!(count(&bw, &[true, true, true]).unwrap().int64_value(&[]), 2);
        assert_eq!(count(&bw, &[false, true, true]).unwrap().int64_value(&[]), 1, "faces that missed the frame are not counted");
        assert_eq!(count(&bw, &[false, false, false]).unwrap().int64_value(&[]), 0);
    }

    #[test]
    fn an_upscaled_frame_is_made_grey_only_when_its_source_is() {
        let up = colour(1, 16);
        let grey_out = grey_frame(&grey_faces_of(1, 8), up.shallow_clone()).unwrap();
        assert_eq!(max_abs(&(channel(&grey_out, 0) - channel(&grey_out, 2))), 0.0);
        assert_eq!(max_abs(&(grey_frame(&colour(1, 8), up.shallow_clone()).unwrap() - &up)), 0.0);
    }

    #[test]
    fn other_modes_leave_the_faces_as_they_are() {
        let restored = colour(2, 8);
        for mode in [ColorMode::Restored, ColorMode::Source] {
            let (out, bw) = grey_faces(mode, restored.shallow_clone(), &grey_faces_of(2, 8)).unwrap();
            assert!(bw.is_none());
            assert_eq!(out.data_ptr(), restored.data_ptr(), "{mode:?}: the very tensor, bit for bit what GPEN made");
        }
    }

    #[test]
    fn source_keeps_the_source_chroma_under_the_restored_luma() {
        // Mid-range values, so that no channel is clamped.
        let restored = Tensor::rand([2, 3, 16, 16], CPU) * 100.0 + 80.0;
        let source = Tensor::rand([2, 3, 16, 16], CPU) * 100.0 + 80.0;
        let out = with_source_chroma(&restored, &source).unwrap();
        let chroma = |t: &Tensor| (channel(t, 0) - channel(t, 1), channel(t, 2) - channel(t, 1));
        let ((or, ob), (sr, sb)) = (chroma(&out), chroma(&source));
        assert!(max_abs(&(or - sr)) < 1e-3 && max_abs(&(ob - sb)) < 1e-3, "the source's chroma");
        assert!(max_abs(&(luma(&out).unwrap() - luma(&restored).unwrap())) < 1e-3, "the restored luma");
        assert!(max_abs(&(luma(&out).unwrap() - luma(&source).unwrap())) > 10.0, "the test's faces differ in luma");
        // Where nothing was pasted (the composed pixel is the frame's), the frame stays as it was.
        let frame = colour(1, 16).round();
        assert_eq!(max_abs(&(with_source_chroma(&frame, &frame).unwrap() - &frame)), 0.0);
        // At the ends of the range the result is clamped, never out of 0..255.
        let white = with_source_chroma(&Tensor::full([1, 3, 4, 4], 255.0, CPU), &colour(1, 4)).unwrap();
        assert!(white.max().double_value(&[]) <= 255.0 && white.min().double_value(&[]) >= 0.0);
    }
}
