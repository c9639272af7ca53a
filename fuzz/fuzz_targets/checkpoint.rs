//! The checkpoint readers (zip and legacy `.pth` pickles, safetensors) on arbitrary bytes: any
//! outcome but a panic, an abort or a runaway allocation is fine.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = gstgpen::checkpoint::load_bytes(std::path::Path::new("fuzz.pth"), data, None);
    // The wrapper-key path of the selection too.
    let _ = gstgpen::checkpoint::load_bytes(std::path::Path::new("fuzz.pth"), data, Some("g_ema"));
});
