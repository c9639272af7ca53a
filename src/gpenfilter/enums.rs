//! The element's enumerated and flag property types, as GObject types (nicks and values are
//! what gst-launch and applications set).

use gst::glib;

/// Face resolution of the GPEN-BFR model; the values are the sizes in pixels, so
/// `size=512` works from gst-launch and `g_object_set (f, "size", 512, NULL)` from C.
#[derive(Debug, Eq, PartialEq, Ord, PartialOrd, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstGpenSize")]
pub enum Size {
    #[enum_value(name = "256 pixels (GPEN-BFR-256)", nick = "256")]
    S256 = 256,
    #[default]
    #[enum_value(name = "512 pixels (GPEN-BFR-512)", nick = "512")]
    S512 = 512,
    #[enum_value(name = "1024 pixels (GPEN-BFR-1024)", nick = "1024")]
    S1024 = 1024,
    #[enum_value(name = "2048 pixels (GPEN-BFR-2048)", nick = "2048")]
    S2048 = 2048,
}

/// Background upscaling factor (GPEN's `--sr_scale`): the output frame is this many times the
/// input in each direction.
#[derive(Debug, Eq, PartialEq, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstGpenUpscale")]
pub enum Upscale {
    #[default]
    #[enum_value(name = "Off: output size = input size", nick = "1")]
    X1 = 1,
    #[enum_value(name = "Twice the width and height", nick = "2")]
    X2 = 2,
    #[enum_value(name = "Four times the width and height", nick = "4")]
    X4 = 4,
}

/// Which RetinaFace weights a MobileNet-0.25 detector file holds (they differ in activation
/// and anchors, and neither works with the other's settings).
#[derive(Debug, Eq, PartialEq, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstGpenDetectorVariant")]
pub enum DetectorVariant {
    #[default]
    #[enum_value(name = "Recognise the file (ResNet-50 files, and the published MobileNet files)", nick = "auto")]
    Auto = 0,
    #[enum_value(name = "Face-Detector-1MB weights: ReLU, small anchors", nick = "fd1mb")]
    Fd1mb = 1,
    #[enum_value(name = "Pytorch_Retinaface / GPEN weights: LeakyReLU, standard anchors", nick = "standard")]
    Standard = 2,
}

/// Which mask restored faces are pasted back through (`mask`).
#[derive(Debug, Eq, PartialEq, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstGpenMask")]
pub enum Mask {
    #[default]
    #[enum_value(name = "The face-parsing mask when a ParseNet checkpoint is found, else the rectangle", nick = "auto")]
    Auto = 0,
    #[enum_value(name = "GPEN's face-parsing mask (ParseNet); the checkpoint must be there", nick = "parse")]
    Parse = 1,
    #[enum_value(name = "GPEN's fixed soft rectangle", nick = "rectangle")]
    Rectangle = 2,
}

/// The face-parsing regions the restored face replaces (`mask-regions`); the others keep the
/// original pixels.
#[glib::flags(name = "GstGpenMaskRegions")]
pub enum MaskRegions {
    #[flags_value(name = "Background", nick = "background")]
    BACKGROUND = 1 << 0,
    #[flags_value(name = "Skin", nick = "skin")]
    SKIN = 1 << 1,
    #[flags_value(name = "Nose", nick = "nose")]
    NOSE = 1 << 2,
    #[flags_value(name = "Glasses", nick = "glasses")]
    GLASSES = 1 << 3,
    #[flags_value(name = "Eyes", nick = "eyes")]
    EYES = 1 << 4,
    #[flags_value(name = "Eyebrows", nick = "brows")]
    BROWS = 1 << 5,
    #[flags_value(name = "Ears", nick = "ears")]
    EARS = 1 << 6,
    #[flags_value(name = "Mouth and lips", nick = "mouth")]
    MOUTH = 1 << 7,
    #[flags_value(name = "Hair", nick = "hair")]
    HAIR = 1 << 8,
    #[flags_value(name = "Hat", nick = "hat")]
    HAT = 1 << 9,
    #[flags_value(name = "Earrings", nick = "earrings")]
    EARRINGS = 1 << 10,
    #[flags_value(name = "Necklace", nick = "necklace")]
    NECKLACE = 1 << 11,
    #[flags_value(name = "Neck", nick = "neck")]
    NECK = 1 << 12,
    #[flags_value(name = "Cloth", nick = "cloth")]
    CLOTH = 1 << 13,
}

impl MaskRegions {
    /// GPEN's set: everything but background, hat and cloth.
    pub fn gpen() -> Self {
        MaskRegions::all() - MaskRegions::BACKGROUND - MaskRegions::HAT - MaskRegions::CLOTH
    }

    /// The parsing classes these regions cover (bit `i`: class `i` of ParseNet's 19).
    pub fn classes(self) -> crate::restorer::MaskRegions {
        const GROUPS: [(MaskRegions, &[u32]); 14] = [
            (MaskRegions::BACKGROUND, &[0]),
            (MaskRegions::SKIN, &[1]),
            (MaskRegions::NOSE, &[2]),
            (MaskRegions::GLASSES, &[3]),
            (MaskRegions::EYES, &[4, 5]),
            (MaskRegions::BROWS, &[6, 7]),
            (MaskRegions::EARS, &[8, 9]),
            (MaskRegions::MOUTH, &[10, 11, 12]),
            (MaskRegions::HAIR, &[13]),
            (MaskRegions::HAT, &[14]),
            (MaskRegions::EARRINGS, &[15]),
            (MaskRegions::NECKLACE, &[16]),
            (MaskRegions::NECK, &[17]),
            (MaskRegions::CLOTH, &[18]),
        ];
        let bits = GROUPS.iter().filter(|(g, _)| self.contains(*g)).flat_map(|(_, c)| c.iter()).fold(0u32, |b, c| b | (1 << c));
        crate::restorer::MaskRegions(bits)
    }
}

/// What happens to a frame that does not fit in the memory budget (`memory-policy`).
#[derive(Debug, Eq, PartialEq, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstGpenMemoryPolicy")]
pub enum MemoryPolicy {
    #[default]
    #[enum_value(
        name = "Degrade: half precision, then smaller face batches, smaller upscaler tiles, the rectangle mask, the next smaller size; drop when nothing fits",
        nick = "degrade"
    )]
    Degrade = 0,
    #[enum_value(name = "Drop the frame and post a QoS message", nick = "drop")]
    Drop = 1,
    #[enum_value(name = "Push the frame unprocessed", nick = "passthrough")]
    Passthrough = 2,
    #[enum_value(name = "Post an error and stop", nick = "error")]
    Error = 3,
}

/// Where the faces restored come from (`faces-from`).
#[derive(Debug, Eq, PartialEq, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstGpenFacesFrom")]
pub enum FacesFrom {
    #[default]
    #[enum_value(name = "The face detector, on its schedule (detection-interval)", nick = "detector")]
    Detector = 0,
    #[enum_value(
        name = "The face region metas of each frame (GstVideoRegionOfInterestMeta of type face); the detector only finds the landmarks of boxes without them",
        nick = "upstream"
    )]
    Upstream = 1,
    #[enum_value(
        name = "The face metas of each frame and the detector's faces, run on every frame; overlapping faces merged",
        nick = "both"
    )]
    Both = 2,
}

/// How interlaced frames are restored (`fields`).
#[derive(Debug, Eq, PartialEq, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstGpenFields")]
pub enum Fields {
    #[default]
    #[enum_value(
        name = "As the caps and buffer flags say: each field of an interlaced frame restored as a picture of its own, progressive frames whole",
        nick = "auto"
    )]
    Auto = 0,
    #[enum_value(name = "Every frame whole, as if progressive (progressive content flagged interlaced, PsF)", nick = "frame")]
    Frame = 1,
}

/// The colour restored faces are pasted in (`color`).
#[derive(Debug, Eq, PartialEq, Hash, Clone, Copy, Default, glib::Enum)]
#[repr(u32)]
#[enum_type(name = "GstGpenColor")]
pub enum Color {
    #[default]
    #[enum_value(
        name = "Faces whose source is black and white pasted as the restored luminance only (the frame stays black and white); others in GPEN's colours",
        nick = "auto"
    )]
    Auto = 0,
    #[enum_value(name = "GPEN's colours on every face", nick = "restored")]
    Restored = 1,
    #[enum_value(
        name = "The restored luminance with the source's colours on every face: no colour shift, no chroma flicker of GPEN's making",
        nick = "source"
    )]
    Source = 2,
}

impl From<Color> for crate::restorer::ColorMode {
    fn from(c: Color) -> Self {
        match c {
            Color::Auto => Self::Auto,
            Color::Restored => Self::Restored,
            Color::Source => Self::Source,
        }
    }
}

impl From<crate::restorer::ColorMode> for Color {
    fn from(m: crate::restorer::ColorMode) -> Self {
        match m {
            crate::restorer::ColorMode::Auto => Color::Auto,
            crate::restorer::ColorMode::Restored => Color::Restored,
            crate::restorer::ColorMode::Source => Color::Source,
        }
    }
}
