//! Every WGSL file in `shaders/` parses and validates with naga (no GPU
//! needed), and the copies compiled into the library are those files.

use std::path::Path;

fn validate(name: &str, source: &str) -> naga::valid::ModuleInfo {
    let module =
        naga::front::wgsl::parse_str(source).unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
    let info = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::default())
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(source)));
    let entry: Vec<_> = module.entry_points.iter().map(|e| (e.name.as_str(), e.stage, e.workgroup_size)).collect();
    assert_eq!(entry.len(), 1, "{name}: one entry point expected, got {entry:?}");
    assert_eq!(entry[0].0, "main", "{name}: Burn's template kernels call the entry point `main`");
    assert_eq!(entry[0].1, naga::ShaderStage::Compute, "{name}");
    let [x, y, z] = entry[0].2;
    assert!((x == 64 || x == 256) && y == 1 && z == 1, "{name}: workgroup size {:?} is not 1-D 64 or 256", entry[0].2);
    // All bindings in group 0, numbered 0..k without gaps (the launch binds buffers in order).
    // All storage buffers read_write: Burn's allocator sub-allocates small buffers from shared pages, and
    // wgpu refuses a dispatch binding one buffer both read-only and writable.
    let mut bindings: Vec<u32> = module
        .global_variables
        .iter()
        .filter_map(|(_, g)| g.binding.as_ref().map(|b| (g, b)))
        .map(|(g, b)| {
            assert_eq!(b.group, 0, "{name}: binding outside group 0");
            assert_eq!(
                g.space,
                naga::AddressSpace::Storage { access: naga::StorageAccess::LOAD | naga::StorageAccess::STORE },
                "{name}: binding {} is not var<storage, read_write>",
                b.binding
            );
            b.binding
        })
        .collect();
    bindings.sort();
    assert_eq!(bindings, (0..bindings.len() as u32).collect::<Vec<_>>(), "{name}: bindings must be 0..k");
    info
}

#[test]
fn every_shader_parses_and_validates() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(&dir).expect("shaders/ exists") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "wgsl") {
            let source = std::fs::read_to_string(&path).unwrap();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert!(source.starts_with("//"), "{name}: must start with its header comment");
            validate(&name, &source);
            names.push(name);
        }
    }
    names.sort();
    assert!(names.contains(&"preprocess.wgsl".to_string()) && names.contains(&"score.wgsl".to_string()), "{names:?}");
}

#[test]
fn library_constants_are_the_shader_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    for (file, text) in [("preprocess.wgsl", h2e::kernels::PREPROCESS_WGSL), ("score.wgsl", h2e::kernels::SCORE_WGSL)] {
        assert_eq!(std::fs::read_to_string(dir.join(file)).unwrap(), text, "{file}");
        validate(file, text);
    }
}

#[test]
fn a_broken_shader_is_rejected() {
    // The checks above would catch a real mistake: a binding written as f32 into a read-only buffer.
    let bad = h2e::kernels::SCORE_WGSL.replace("var<storage, read_write> scores", "var<storage, read> scores");
    let module = naga::front::wgsl::parse_str(&bad).expect("still parses");
    let res = naga::valid::Validator::new(naga::valid::ValidationFlags::all(), naga::valid::Capabilities::default())
        .validate(&module);
    assert!(res.is_err(), "storing into a read-only buffer must fail validation");
}
