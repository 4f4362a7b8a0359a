//! Checks the embedded kernel objects against the Rust layout mirrors. Needs
//! no privileges: it parses the objects, it does not load them.

use aya_obj::{Object, ProgramSection};
use hermes_dsr::{
    HOST_OBJECT, LB_OBJECT,
    layout::{self, FlowKey, FragKey, HostConfig, HostLoad, LbConfig, ServerSlot},
};

const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// (name, type, key size, value size, entries, mmapable)
type MapCase = (&'static str, u32, usize, usize, usize, bool);

fn check(object: &[u8], program: &str, cases: &[MapCase]) {
    let obj = Object::parse(object).expect("the embedded object parses");
    let prog =
        obj.programs.get(program).unwrap_or_else(|| panic!("program `{program}` present under its C name"));
    assert!(
        matches!(prog.section, ProgramSection::SchedClassifier),
        "`{program}` must be a tc classifier, found {:?}",
        prog.section
    );
    for &(name, ty, key, value, entries, mmapable) in cases {
        let m = obj.maps.get(name).unwrap_or_else(|| panic!("map `{name}` present"));
        assert_eq!(m.map_type(), ty, "type of `{name}`");
        assert_eq!(m.key_size() as usize, key, "key size of `{name}`");
        assert_eq!(m.value_size() as usize, value, "value size of `{name}` vs its Rust mirror");
        assert_eq!(m.max_entries() as usize, entries, "entries of `{name}`");
        assert_eq!(m.map_flags() & BPF_F_MMAPABLE != 0, mmapable, "BPF_F_MMAPABLE on `{name}`");
    }
    assert_eq!(obj.maps.len(), cases.len(), "no map beyond the mirrored ones");
}

#[test]
fn balancer_object_matches_layout_mirrors() {
    check(
        LB_OBJECT,
        layout::LB_PROGRAM,
        &[
            (layout::LB_CONFIG_MAP, BPF_MAP_TYPE_ARRAY, 4, size_of::<LbConfig>(), 1, true),
            (layout::SERVERS_MAP, BPF_MAP_TYPE_ARRAY, 4, size_of::<ServerSlot>(), layout::MAX_SERVERS, true),
            (layout::MAGLEV_MAP, BPF_MAP_TYPE_ARRAY, 4, size_of::<u64>(), layout::MAGLEV_SIZE, true),
            (layout::LB_COUNTERS_MAP, BPF_MAP_TYPE_ARRAY, 4, size_of::<u64>(), layout::LB_COUNTERS_LEN, true),
            (
                layout::FLOWS_MAP,
                BPF_MAP_TYPE_LRU_HASH,
                size_of::<FlowKey>(),
                size_of::<u32>(),
                layout::FLOWS_LEN,
                false,
            ),
            (
                layout::SYNS_MAP,
                BPF_MAP_TYPE_LRU_HASH,
                size_of::<FlowKey>(),
                size_of::<u32>(),
                layout::SYNS_LEN,
                false,
            ),
            (
                layout::FRAGS_MAP,
                BPF_MAP_TYPE_LRU_HASH,
                size_of::<FragKey>(),
                size_of::<u32>(),
                layout::FRAGS_LEN,
                false,
            ),
        ],
    );
}

#[test]
fn balancer_object_has_its_xdp_programs() {
    let obj = Object::parse(LB_OBJECT).expect("the embedded object parses");
    for name in [layout::LB_XDP_PROGRAM, layout::XDP_PASS_PROGRAM] {
        let prog =
            obj.programs.get(name).unwrap_or_else(|| panic!("program `{name}` present under its C name"));
        assert!(
            matches!(prog.section, ProgramSection::Xdp { .. }),
            "`{name}` must be an XDP program, found {:?}",
            prog.section
        );
    }
}

#[test]
fn host_object_matches_layout_mirrors() {
    check(
        HOST_OBJECT,
        layout::HOST_PROGRAM,
        &[
            (layout::HOST_CONFIG_MAP, BPF_MAP_TYPE_ARRAY, 4, size_of::<HostConfig>(), 1, true),
            (layout::HOST_LOAD_MAP, BPF_MAP_TYPE_ARRAY, 4, size_of::<HostLoad>(), 1, true),
            (
                layout::HOST_COUNTERS_MAP,
                BPF_MAP_TYPE_ARRAY,
                4,
                size_of::<u64>(),
                layout::HOST_COUNTERS_LEN,
                true,
            ),
        ],
    );
}

#[test]
fn mac_and_address_encodings_round_trip() {
    let mac = [0x02, 0x00, 0x5e, 0x10, 0x20, 0x30];
    assert_eq!(layout::u64_to_mac(layout::mac_to_u64(mac)), mac);
    // In memory, the programs see the MAC's bytes in wire order.
    assert_eq!(&layout::mac_to_u64(mac).to_ne_bytes()[..6], &mac);
    assert_eq!(layout::ipv4_to_u32("192.0.2.1".parse().unwrap()).to_ne_bytes(), [192, 0, 2, 1]);
    assert_eq!(layout::parse_mac("02:00:5e:10:20:30"), Ok(mac));
    for bad in ["02:00:5e:10:20", "02:00:5e:10:20:30:40", "02:00:5e:10:20:zz", ""] {
        assert!(layout::parse_mac(bad).is_err(), "{bad:?} parsed");
    }
    // The option carries the token big endian; the programs copy its bytes.
    let token = 0x0102_0304_0506_0708;
    assert_eq!(layout::token_to_u64(token).to_ne_bytes(), [1, 2, 3, 4, 5, 6, 7, 8]);
    assert_eq!(layout::parse_token("5eed0011"), Ok(0x5eed_0011));
    assert_eq!(layout::parse_token("0xFFFFFFFFFFFFFFFF"), Ok(u64::MAX));
    for bad in ["", "0", "0x0", "0x", "12345678901234567", "5eed-0011", "+1"] {
        assert!(layout::parse_token(bad).is_err(), "{bad:?} parsed");
    }
}
