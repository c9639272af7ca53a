//! Banding of the generator's top decoder levels: which levels run on horizontal bands, and
//! how tall the bands are, so that the largest feature maps of a forward never exist whole.

use super::config::GpenConfig;

/// Runs the top levels of the decoder on horizontal bands, so that their feature maps (the
/// largest of the forward: 128 channels of 512x512 at the top of GPEN-512) never exist whole.
/// Exact: every op of a level is a convolution or pointwise, so a band computed from enough
/// rows of the level below equals the same rows of the whole map (up to the rounding of the
/// convolution kernels chosen for its shape).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Strips {
    /// How many of the top levels run on bands.
    pub levels: usize,
    /// Output rows per band (rounded up to a multiple of `2^levels`).
    pub rows: i64,
}

/// `a / b` rounded up, for positive numbers (`i64::div_ceil` is not stable).
pub(super) fn ceil_div(a: i64, b: i64) -> i64 {
    (a + b - 1) / b
}

/// The largest banded feature map (per band, halo included) that [`Strips::plan`] aims for.
pub const STRIP_BYTES: i64 = 32 << 20;

/// Whether a forward runs its top decoder levels on bands ([`Strips`]), chosen per call: banding
/// saves memory for extra work (recomputed halo rows, many small launches), worth it on the CPU
/// and on a GPU short of memory, not on a GPU with room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Banding {
    /// Band the levels whose maps exceed [`STRIP_BYTES`] (what [`FullGenerator::forward`] does).
    #[default]
    Default,
    /// Whole maps throughout.
    Off,
    /// Band the levels whose maps exceed this many bytes, each band's map kept under it.
    Above(u64),
}

impl Strips {
    /// Rows of the first whole level that a band needs on each side: going up a level, the
    /// rows spoiled at a band's edges by the zero padding of its convolutions become
    /// `2c + 2` (the up-sampling conv and its blur, also the RGB skip's up-sampling) and one
    /// more (the 3x3 conv), from none at the whole level.
    pub fn halo(levels: usize) -> i64 {
        let spoiled = (0..levels).fold(0i64, |c, _| 2 * c + 3);
        ceil_div(spoiled, 1 << levels)
    }

    /// The banding for a batch: every top level whose concatenated map (conv output plus
    /// encoder feature) would exceed [`STRIP_BYTES`] runs on bands, as many as keep each band's
    /// map under it; `None` when no level is that large.
    pub fn plan(cfg: &GpenConfig, batch: i64, elem_bytes: i64) -> Option<Strips> {
        Self::plan_above(cfg, batch, elem_bytes, STRIP_BYTES)
    }

    /// The banding that `banding` asks for (see [`Banding`]; `Default` is [`Strips::plan`]).
    pub fn plan_with(cfg: &GpenConfig, batch: i64, elem_bytes: i64, banding: Banding) -> Option<Strips> {
        match banding {
            Banding::Default => Self::plan(cfg, batch, elem_bytes),
            Banding::Off => None,
            Banding::Above(bytes) => Self::plan_above(cfg, batch, elem_bytes, i64::try_from(bytes).unwrap_or(i64::MAX)),
        }
    }

    /// [`Strips::plan`] with `limit` in place of [`STRIP_BYTES`].
    fn plan_above(cfg: &GpenConfig, batch: i64, elem_bytes: i64, limit: i64) -> Option<Strips> {
        let limit = limit.max(1);
        let map = |res: i64| batch * 2 * cfg.channels(res) * res * res * elem_bytes;
        let mut levels = 0;
        while levels + 3 < cfg.log_size() as usize && map(cfg.size >> levels) > limit {
            levels += 1;
        }
        if levels == 0 {
            return None;
        }
        let scale = 1i64 << levels;
        let row_bytes = batch * 2 * cfg.channels(cfg.size) * cfg.size * elem_bytes;
        // Bands at least as tall as their two halos: past that the recomputed rows would cost
        // more than the memory saved is worth.
        let halos = 2 * Self::halo(levels) * scale;
        let fit = (limit / row_bytes - halos).max(halos);
        let bands = ceil_div(cfg.size, fit);
        Some(Strips { levels, rows: ceil_div(ceil_div(cfg.size, bands), scale) * scale })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halo_covers_the_rows_spoiled_at_band_edges() {
        // 0 -> 3 -> 9 -> 21 spoiled rows at the top level, over 2, 4, 8 times the entry rows.
        assert_eq!(Strips::halo(1), 2);
        assert_eq!(Strips::halo(2), 3);
        assert_eq!(Strips::halo(3), 3);
    }

    #[test]
    fn bands_only_where_maps_are_large() {
        let gpen512 = GpenConfig::official(512);
        // fp32, one face: 128 MiB at 512, 64 MiB at 256, 32 MiB at 128 (not over).
        let s = Strips::plan(&gpen512, 1, 4).unwrap();
        assert_eq!(s.levels, 2);
        // 32 MiB of 256 KiB rows, less 2 x 3 x 4 halo rows: 104 rows, 5 bands.
        assert_eq!(s.rows, 104);
        assert_eq!(Strips::plan(&gpen512, 1, 2).unwrap().levels, 1);
        assert_eq!(Strips::plan(&GpenConfig::official(256), 1, 2), None);
        let s = Strips::plan(&GpenConfig::official(1024), 4, 4).unwrap();
        assert!(s.levels >= 3 && s.rows % (1 << s.levels) == 0, "{s:?}");
    }

    #[test]
    fn banding_is_chosen_per_call() {
        let gpen512 = GpenConfig::official(512);
        for (batch, elem) in [(1, 4), (1, 2), (4, 4)] {
            assert_eq!(Strips::plan_with(&gpen512, batch, elem, Banding::Default), Strips::plan(&gpen512, batch, elem));
            assert_eq!(Strips::plan_with(&gpen512, batch, elem, Banding::Off), None);
            let at_default = Banding::Above(STRIP_BYTES as u64);
            assert_eq!(Strips::plan_with(&gpen512, batch, elem, at_default), Strips::plan(&gpen512, batch, elem));
        }
        // A high threshold bands nothing; a lower one bands more levels in thinner bands.
        assert_eq!(Strips::plan_with(&gpen512, 1, 4, Banding::Above(1 << 30)), None);
        let low = Strips::plan_with(&gpen512, 1, 4, Banding::Above(8 << 20)).unwrap();
        let default = Strips::plan(&gpen512, 1, 4).unwrap();
        assert!(low.levels > default.levels && low.rows < default.rows, "{low:?} vs {default:?}");
        // Above(0) is the most banding there is, not a division by zero.
        let most = Strips::plan_with(&gpen512, 1, 4, Banding::Above(0)).unwrap();
        assert_eq!(most.levels, gpen512.log_size() as usize - 3);
    }
}
