//! The command line: what `--help` shows, and the checks clap cannot express (which options go
//! with which form of the command).

use std::path::PathBuf;

use clap::{CommandFactory, Parser};

/// Restores the faces of a video file with gpenfilter, keeping its sound.
///
/// Forms:
///   gst-gpen-restore [OPTIONS] INPUT OUTPUT.{mp4,mkv}                 the whole file in one process
///   gst-gpen-restore [OPTIONS] INPUT SEGMENT.mkv --segment I/N        one segment, video only
///   gst-gpen-restore --join OUTPUT SEGMENT.mkv... --audio-from INPUT  the segments joined, with the sound
///   gst-gpen-restore --plan N INPUT                                   the cut points, as JSON
///
/// Exit codes: 0 done; 1 the pipeline failed (the message says why); 2 bad arguments or an
/// input/output that cannot be handled (an output that is one of the inputs, a missing folder,
/// a still image, mixed segments); 3 frames were dropped by the memory policy (the output is
/// kept; --allow-drops gives 0); 130 interrupted by Ctrl-C.
///
/// Files: an output is written to NAME.partial-PID.EXT beside it and renamed when complete, so a
/// failure leaves no file. One Ctrl-C finishes a shorter, playable OUTPUT (exit 130; a segment
/// keeps nothing); a second Ctrl-C quits at once and leaves no file. A killed run may leave the
/// partial file, which the next run for that output removes.
///
/// Output video: H.264 4:2:0 8-bit (High profile) unless --keep-chroma. Still images are refused:
/// use the gpenfilter element with imagefreeze for a picture.
#[derive(Parser, Debug)]
#[command(name = "gst-gpen-restore", version, verbatim_doc_comment, max_term_width = 110)]
pub struct Cli {
    /// INPUT and OUTPUT; with --join, the segment files in order; with --plan, INPUT
    #[arg(value_name = "PATH", required = true)]
    pub paths: Vec<PathBuf>,

    /// Restore only segment I of N (I counts from 0, like JOB_COMPLETION_INDEX). The cuts sit on the
    /// input's keyframes, about equal in duration, the same for every worker; there are at most as
    /// many segments as keyframes (more is an error). OUTPUT (.mkv or .mp4) gets the video only.
    /// A finished OUTPUT with the segment's frame count is not redone [default: the whole file]
    #[arg(long, value_name = "I/N", value_parser = parse_segment, allow_hyphen_values = true)]
    pub segment: Option<(u32, u32)>,

    /// Seconds before the segment's start that are decoded and run through detection and tracking,
    /// not written, so that tracks and smoothing at the cut are as in a one-process run. The
    /// decoding starts at the keyframe before
    #[arg(long, value_name = "SECONDS", default_value_t = 2.0, value_parser = parse_seconds)]
    pub preroll: f64,

    /// Join the segment files given (in order) into OUTPUT (.mp4 or .mkv) without re-encoding the
    /// video; needs --audio-from [default: none, restore instead]
    #[arg(long, value_name = "OUTPUT", conflicts_with_all = ["segment", "plan"])]
    pub join: Option<PathBuf>,

    /// With --join: the input the segments were restored from. Its audio streams are muxed once
    /// (copied where the container takes them) and its frame times are kept [default: none]
    #[arg(long, value_name = "INPUT", requires = "join")]
    pub audio_from: Option<PathBuf>,

    /// Print the segments of INPUT for N workers as JSON and exit: at most as many as it has
    /// keyframes (fewer when it has fewer), with their times and frame counts [default: none]
    #[arg(long, value_name = "N", conflicts_with = "segment", value_parser = clap::value_parser!(u32).range(1..))]
    pub plan: Option<u32>,

    /// Keep the source's chroma format (4:2:2, 4:4:4, 10-bit) where the encoder takes it, instead
    /// of 4:2:0 8-bit, which every player decodes [default: off]
    #[arg(long, conflicts_with_all = ["join", "plan"])]
    pub keep_chroma: bool,

    /// Exit 0 even when the memory policy dropped frames (the summary still counts them)
    /// [default: exit 3 on drops]
    #[arg(long, conflicts_with_all = ["join", "plan"])]
    pub allow_drops: bool,

    /// GPEN model size: 256, 512, 1024 or 2048 [default: 512]
    #[arg(long, value_name = "PX")]
    pub size: Option<String>,
    /// Half precision on CUDA [default: off]
    #[arg(long)]
    pub fp16: bool,
    /// GPEN checkpoint (.pth or .safetensors), or a folder holding GPEN-BFR-<size>.pth
    /// [default: $GST_GPEN_MODEL_DIR, else ~/.local/share/gst-gpen/weights]
    #[arg(long, value_name = "PATH")]
    pub model: Option<String>,
    /// RetinaFace checkpoint, or a folder searched for one [default: the model folder, see --model]
    #[arg(long, value_name = "PATH")]
    pub detector_model: Option<String>,
    /// Background upscaling factor: 1, 2 or 4 [default: 1]
    #[arg(long, value_name = "FACTOR")]
    pub upscale: Option<String>,
    /// RRDBNet checkpoint of the upscale factor [default: none, bicubic interpolation]
    #[arg(long, value_name = "PATH")]
    pub upscaler_model: Option<String>,
    /// Input pixels per side of the upscaler's tiles; 0 = the whole frame at once [default: 0]
    #[arg(long, value_name = "PX")]
    pub tile_size: Option<String>,
    /// Input pixels by which neighbouring upscaler tiles overlap; --tile-size must be at least
    /// twice this [default: the element's, see gst-inspect-1.0 gpenfilter]
    #[arg(long, value_name = "PX")]
    pub tile_overlap: Option<String>,
    /// Landmark smoothing along each face track, 0..1 [default: 0.5]
    #[arg(long, value_name = "0..1")]
    pub temporal_smoothing: Option<String>,
    /// Blend of each restored face with its previous one, 0..1 [default: 0.8]
    #[arg(long, value_name = "0..1")]
    pub temporal_consistency: Option<String>,
    /// Run the detector every N frames and after scene cuts; tracks carry faces between [default: 1]
    #[arg(long, value_name = "N")]
    pub detection_interval: Option<String>,
    /// Mask restored faces are pasted through: auto, parse or rectangle [default: auto]
    #[arg(long, value_name = "MASK")]
    pub mask: Option<String>,
    /// ParseNet checkpoint for --mask parse [default: ParseNet-latest.pth in the model folder]
    #[arg(long, value_name = "PATH")]
    pub parse_model: Option<String>,
    /// Face-parsing regions the restored face replaces, joined with +
    /// [default: skin+nose+glasses+eyes+brows+ears+mouth+hair+earrings+necklace+neck]
    #[arg(long, value_name = "REGIONS")]
    pub mask_regions: Option<String>,
    /// Colour of the restored faces: auto (black-and-white faces stay black and white), restored
    /// (GPEN's colours) or source (the source's colours under the restored luminance) [default: auto]
    #[arg(long, value_name = "COLOR")]
    pub color: Option<String>,
    /// Interlaced video: auto (each field restored as a picture of its own) or frame (whole
    /// frames, for progressive content flagged interlaced) [default: auto]
    #[arg(long, value_name = "FIELDS")]
    pub fields: Option<String>,
    /// What to do when memory runs short: degrade, drop, passthrough or error [default: degrade]
    #[arg(long, value_name = "POLICY")]
    pub memory_policy: Option<String>,
    /// Device memory the restorer may use, in MiB; 0 = what the device has free [default: 0]
    #[arg(long, value_name = "MIB")]
    pub vram_budget: Option<String>,
    /// Device: auto (CUDA device 0 if available, else CPU), cpu, cuda or cuda:N [default: auto]
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
}

/// The form of the command, checked.
pub enum Mode {
    Whole { input: PathBuf, output: PathBuf },
    Segment { input: PathBuf, output: PathBuf, index: u32, count: u32 },
    Join { output: PathBuf, segments: Vec<PathBuf>, input: PathBuf },
    Plan { input: PathBuf, count: u32 },
}

impl Cli {
    /// gpenfilter properties, as name and value strings, for the options given.
    pub fn properties(&self) -> Vec<(String, String)> {
        let given = [
            ("size", &self.size),
            ("model", &self.model),
            ("detector-model", &self.detector_model),
            ("upscale", &self.upscale),
            ("upscaler-model", &self.upscaler_model),
            ("tile-size", &self.tile_size),
            ("tile-overlap", &self.tile_overlap),
            ("temporal-smoothing", &self.temporal_smoothing),
            ("temporal-consistency", &self.temporal_consistency),
            ("detection-interval", &self.detection_interval),
            ("mask", &self.mask),
            ("parse-model", &self.parse_model),
            ("mask-regions", &self.mask_regions),
            ("color", &self.color),
            ("fields", &self.fields),
            ("memory-policy", &self.memory_policy),
            ("vram-budget", &self.vram_budget),
            ("device", &self.device),
        ];
        let mut out: Vec<(String, String)> = given.iter().filter_map(|(k, v)| v.as_ref().map(|v| (k.to_string(), v.clone()))).collect();
        if self.fp16 {
            out.push(("fp16".into(), "true".into()));
        }
        out
    }

    /// The form of the command; a wrong combination exits 2 with the usage, as clap does.
    pub fn mode(&self) -> Mode {
        let fail = |msg: String| -> ! { Cli::command().error(clap::error::ErrorKind::ArgumentConflict, msg).exit() };
        let paths = self.paths.clone();
        if let Some(output) = &self.join {
            let Some(input) = self.audio_from.clone() else {
                fail(
                    "--join needs --audio-from INPUT: the file the segments were restored from, whose sound and frame times \
                     the joined file takes. Add --audio-from INPUT"
                        .into(),
                )
            };
            if !self.properties().is_empty() {
                fail("--join copies the restored video: restoring options do not apply to it".into());
            }
            return Mode::Join { output: output.clone(), segments: paths, input };
        }
        if let Some(count) = self.plan {
            let [input]: [PathBuf; 1] =
                paths.try_into().unwrap_or_else(|p: Vec<PathBuf>| fail(format!("--plan takes one INPUT, not {}", p.len())));
            return Mode::Plan { input, count };
        }
        if self.upscaler_model.is_some() && self.upscale.as_deref().is_none_or(|u| u.trim() == "1") {
            fail("--upscaler-model is only used with --upscale 2 or 4: add --upscale with the model's factor, or leave it out".into());
        }
        let [input, output]: [PathBuf; 2] =
            paths.try_into().unwrap_or_else(|p: Vec<PathBuf>| fail(format!("INPUT and OUTPUT are needed, {} path(s) given", p.len())));
        match self.segment {
            Some((index, count)) => Mode::Segment { input, output, index, count },
            None => Mode::Whole { input, output },
        }
    }
}

fn parse_segment(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{s:?} is not I/N: segment I of N counts from 0, so 0 <= I < N (e.g. --segment 0/4 is the first of 4)");
    let (i, n) = s.split_once('/').ok_or_else(bad)?;
    let (i, n): (u32, u32) = (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
    if n == 0 || i >= n {
        return Err(bad());
    }
    Ok((i, n))
}

fn parse_seconds(s: &str) -> Result<f64, String> {
    s.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0).ok_or_else(|| format!("{s:?} is not a number of seconds >= 0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_is_index_over_count() {
        assert_eq!(parse_segment("0/3"), Ok((0, 3)));
        assert_eq!(parse_segment("2/3"), Ok((2, 3)));
        for bad in ["3/3", "1/0", "1", "a/b", "-1/3", ""] {
            assert!(parse_segment(bad).is_err(), "{bad}");
        }
    }
}
