//! `header`: `parse_header` over a slice and `read_header` over a reader never
//! panic, agree with each other, and an accepted header's content survives a
//! rebuild with `build_header` whenever its names are ones our writer takes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vma_format::names::check_name;
use vma_format::raw::MAX_DEV_ID;
use vma_format::{build_header, parse_header, read_header};

fuzz_target!(|data: &[u8]| {
    for data in vma_fuzz::variants(data) {
        check(&data);
    }
});

fn check(data: &[u8]) {
    let parsed = parse_header(data);
    let mut rd = data;
    let read = read_header(&mut rd);
    match (&parsed, &read) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(_), Err(_)) => {}
        _ => panic!("parse_header and read_header disagree: {parsed:?} vs {read:?}"),
    }
    let Ok(h) = parsed else { return };
    // read_header leaves the reader at the first extent.
    assert_eq!(data.len() - rd.len(), h.header_size() as usize);
    let mut last = 0u8;
    for d in &h.devices {
        assert!(
            d.id > last && d.id <= MAX_DEV_ID,
            "device ids ascend within 1..=254"
        );
        last = d.id;
        assert!(d.size > 0 && !d.name.contains(&0));
        assert_eq!(h.device(d.id), Some(d));
    }
    for c in &h.configs {
        assert!(!c.name.contains(&0) && c.data.len() <= 65535);
    }
    // Rebuild through the writer's layout and parse again.
    if h.configs.iter().all(|c| check_name(&c.name).is_ok())
        && h.devices.iter().all(|d| check_name(&d.name).is_ok())
    {
        let configs: Vec<_> = h
            .configs
            .iter()
            .map(|c| (c.name.clone(), c.data.clone()))
            .collect();
        let devices: Vec<_> = h.devices.iter().map(|d| (d.name.clone(), d.size)).collect();
        if let Ok(bytes) = build_header(h.uuid, h.ctime, &configs, &devices) {
            let again = parse_header(&bytes).expect("a header we built parses");
            assert_eq!(again.uuid, h.uuid);
            assert_eq!(again.ctime, h.ctime);
            let cfg: Vec<_> = again
                .configs
                .iter()
                .map(|c| (c.name.clone(), c.data.clone()))
                .collect();
            assert_eq!(cfg, configs);
            let dev: Vec<_> = again
                .devices
                .iter()
                .map(|d| (d.name.clone(), d.size))
                .collect();
            assert_eq!(dev, devices);
        }
    }
}
