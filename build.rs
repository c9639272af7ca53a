fn main() {
    gst_plugin_version_helper::info();

    // torch-sys passes its rpath only to its own C++ compile; give our bin, cdylib and test
    // targets a RUNPATH so the plugin loads without LD_LIBRARY_PATH.
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        // The C++ shim (csrc/shim.cpp) over libtorch: accelerator memory figures, cache release.
        let root = std::path::Path::new(&lib).parent().expect("libtorch root").to_path_buf();
        println!("cargo:rerun-if-changed=csrc/shim.cpp");
        cc::Build::new()
            .cpp(true)
            .file("csrc/shim.cpp")
            .include(root.join("include"))
            .include(root.join("include/torch/csrc/api/include"))
            .flag("-std=c++17")
            .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
            .flag("-DGLOG_USE_GLOG_EXPORT")
            .warnings(false)
            .compile("gpenshim");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        // libtorch_cuda is not linked but opened at run time where a driver exists (src/cuda.rs);
        // this folder is its fallback location.
        println!("cargo:rustc-env=GPEN_LIBTORCH_LIB={lib}");
    }
}
