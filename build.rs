fn main() {
    gst_plugin_version_helper::info();

    // torch-sys passes its rpath only to its own C++ compile; give our bin, cdylib and test
    // targets a RUNPATH so the plugin loads without LD_LIBRARY_PATH.
    if let Ok(lib) = std::env::var("DEP_TCH_LIBTORCH_LIB") {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
        // rustc links with --as-needed, which drops libtorch_cuda (nothing references it by
        // symbol) and leaves the CUDA backend unregistered: force it in.
        let has_cuda = std::path::Path::new(&lib).join("libtorch_cuda.so").exists();
        if has_cuda {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
}
