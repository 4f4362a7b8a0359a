//! Checks the embedded kernel object against the Rust layout mirrors. Needs
//! no privileges: it parses the object, it does not load it.

use aya_obj::{Object, ProgramSection, programs::SkReuseportAttachType};
use hermes_bpf::{
    OBJECT,
    layout::{self, Control, DEFAULT_SLOTS, WorkerState, counter},
};

const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_REUSEPORT_SOCKARRAY: u32 = 20;
const BPF_F_MMAPABLE: u32 = 1 << 10;

#[test]
fn embedded_object_matches_layout_mirrors() {
    let obj = Object::parse(OBJECT).expect("the embedded object parses");

    let prog = obj.programs.get(layout::PROGRAM_NAME).expect("program present under its C name");
    assert!(
        matches!(
            prog.section,
            ProgramSection::SkReuseport { attach_type: SkReuseportAttachType::SelectOrMigrate }
        ),
        "the program must use the select-or-migrate attach type, found {:?}",
        prog.section
    );

    let map = |name: &str| obj.maps.get(name).unwrap_or_else(|| panic!("map `{name}` present"));
    let cases: [(&str, u32, usize, usize, bool); 4] = [
        (layout::CONTROL_MAP, BPF_MAP_TYPE_ARRAY, size_of::<Control>(), 1, true),
        (layout::TABLE_MAP, BPF_MAP_TYPE_ARRAY, size_of::<WorkerState>(), DEFAULT_SLOTS, true),
        (layout::COUNTERS_MAP, BPF_MAP_TYPE_ARRAY, size_of::<u64>(), counter::len(DEFAULT_SLOTS), true),
        (layout::SOCKETS_MAP, BPF_MAP_TYPE_REUSEPORT_SOCKARRAY, size_of::<u32>(), DEFAULT_SLOTS, false),
    ];
    for (name, ty, value_size, entries, mmapable) in cases {
        let m = map(name);
        assert_eq!(m.map_type(), ty, "type of `{name}`");
        assert_eq!(m.key_size(), 4, "key size of `{name}`");
        assert_eq!(m.value_size() as usize, value_size, "value size of `{name}` vs its Rust mirror");
        assert_eq!(m.max_entries() as usize, entries, "entries of `{name}`");
        assert_eq!(m.map_flags() & BPF_F_MMAPABLE != 0, mmapable, "BPF_F_MMAPABLE on `{name}`");
    }
    assert_eq!(obj.maps.len(), cases.len(), "no map beyond the mirrored ones");
}
