//! Our writer on the very inputs Proxmox's `vma create` was given for
//! `ref-two-disks.vma`: the archive reads back equal to the inputs, and its
//! header is byte-for-byte Proxmox's (same blob layout, same pointers).

use std::fs;

use vma_format::raw::{
    RawExtentHeader, EXTENT_HEADER_SIZE, HEADER_FIXED_SIZE, WRITER_CLUSTERS_PER_EXTENT,
};
use vma_format::{IndexedReader, StreamReader, WriterBuilder};
use vma_tests::vector;

const CS: usize = 65536;

struct Inputs {
    conf: Vec<u8>,
    fw: Vec<u8>,
    a: Vec<u8>,
    b: Vec<u8>,
}

fn inputs() -> Inputs {
    let r = |n: &str| fs::read(vector("inputs").join(n)).unwrap();
    Inputs {
        conf: r("qemu-server.conf"),
        fw: r("qemu-server.fw"),
        a: r("diskA.raw"),
        b: r("diskB.raw"),
    }
}

fn reference() -> Vec<u8> {
    fs::read(vector("ref-two-disks.vma")).unwrap()
}

/// Writes the inputs with the reference archive's uuid and ctime, clusters in `order`.
fn write(inp: &Inputs, order: &[(u8, u32)]) -> Vec<u8> {
    write_with(inp, order, false, false)
}

/// [`write`], optionally with the writer's background output thread and
/// with all-zero clusters handed over by `write_zero_cluster`.
fn write_with(
    inp: &Inputs,
    order: &[(u8, u32)],
    background: bool,
    zeros_as_holes: bool,
) -> Vec<u8> {
    let refh = StreamReader::new(&reference()[..])
        .unwrap()
        .header()
        .clone();
    let mut b = WriterBuilder::new();
    b.add_config("qemu-server.conf", inp.conf.clone()).unwrap();
    b.add_config("qemu-server.fw", inp.fw.clone()).unwrap();
    assert_eq!(b.add_device("drive-scsi0", inp.a.len() as u64).unwrap(), 1);
    assert_eq!(b.add_device("drive-scsi1", inp.b.len() as u64).unwrap(), 2);
    b.uuid(refh.uuid).ctime(refh.ctime);
    let w = if background {
        b.build_background(Vec::new()).unwrap()
    } else {
        b.build(Vec::new()).unwrap()
    };
    for &(dev, c) in order {
        let d = if dev == 1 { &inp.a } else { &inp.b };
        let s = c as usize * CS;
        let data = &d[s..(s + CS).min(d.len())];
        if zeros_as_holes && data.iter().all(|&b| b == 0) {
            w.write_zero_cluster(dev, c).unwrap();
        } else {
            w.write_cluster(dev, c, data).unwrap();
        }
    }
    w.finish().unwrap().0
}

/// A0, B0, A1, B1, … then the rest of B.
fn interleaved(inp: &Inputs) -> Vec<(u8, u32)> {
    let (na, nb) = (
        inp.a.len().div_ceil(CS) as u32,
        inp.b.len().div_ceil(CS) as u32,
    );
    let mut v = Vec::new();
    for c in 0..na.max(nb) {
        if c < na {
            v.push((1, c));
        }
        if c < nb {
            v.push((2, c));
        }
    }
    v
}

#[test]
fn archive_reads_back_equal_to_the_inputs() {
    let inp = inputs();
    let bytes = write(&inp, &interleaved(&inp));
    // Streaming.
    let mut sr = StreamReader::new(&bytes[..]).unwrap();
    let mut disks = [vec![0u8; inp.a.len()], vec![0u8; inp.b.len()]];
    let mut extents = 0;
    while let Some(e) = sr.next_extent().unwrap() {
        extents += 1;
        assert!(e.clusters().count() <= WRITER_CLUSTERS_PER_EXTENT);
        for c in e.clusters() {
            let out = &mut disks[c.dev_id as usize - 1];
            for (blk, data) in c.runs() {
                let s = c.device_offset() as usize + blk * 4096;
                let end = (s + data.len()).min(out.len());
                out[s..end].copy_from_slice(&data[..end - s]);
            }
        }
    }
    assert_eq!(extents, 2, "81 clusters = 58 + 23");
    sr.completeness().check(|_| true).unwrap();
    assert!(disks[0] == inp.a && disks[1] == inp.b);
    let h = sr.header();
    assert_eq!(
        (h.configs[0].data.as_slice(), h.configs[1].data.as_slice()),
        (&inp.conf[..], &inp.fw[..])
    );
    // Indexed.
    let ir = IndexedReader::open(bytes).unwrap();
    for (dev, want) in [(1u8, &inp.a), (2, &inp.b)] {
        let mut buf = vec![0u8; want.len() + 10];
        assert_eq!(ir.read(dev, 0, &mut buf).unwrap(), want.len());
        assert!(buf[..want.len()] == want[..]);
    }
}

#[test]
fn header_layout_follows_the_reference_rules() {
    let inp = inputs();
    let bytes = write(&inp, &interleaved(&inp));
    let h = StreamReader::new(&bytes[..]).unwrap().header().clone();
    let refh = StreamReader::new(&reference()[..])
        .unwrap()
        .header()
        .clone();
    let raw = &h.raw;
    assert_eq!(raw.header_size, 12800);
    assert_eq!(raw.header_size % 512, 0);
    assert_eq!(raw.blob_buffer_offset as usize, HEADER_FIXED_SIZE);
    assert_eq!(raw.blob_buffer_size, 319);
    assert_eq!(
        (
            raw.config_names[0],
            raw.config_data[0],
            raw.config_names[1],
            raw.config_data[1]
        ),
        (1, 20, 252, 269)
    );
    assert_eq!(
        (raw.dev_info[1].devname_ptr, raw.dev_info[2].devname_ptr),
        (291, 305)
    );
    // Same inputs ⇒ same pointers as Proxmox's archive.
    assert_eq!(raw.config_names, refh.raw.config_names);
    assert_eq!(raw.config_data, refh.raw.config_data);
    assert_eq!(raw.dev_info, refh.raw.dev_info);

    // Walk the blob buffer by hand: configs (name, data) in order, then device names.
    let area = &bytes[HEADER_FIXED_SIZE..raw.header_size as usize];
    assert_eq!(area[0], 0, "byte 0 is unused");
    let nul = |s: &str| {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        v
    };
    let want: Vec<Vec<u8>> = vec![
        nul("qemu-server.conf"),
        inp.conf.clone(),
        nul("qemu-server.fw"),
        inp.fw.clone(),
        nul("drive-scsi0"),
        nul("drive-scsi1"),
    ];
    let mut pos = 1;
    let mut starts = Vec::new();
    for blob in &want {
        let len = u16::from_le_bytes([area[pos], area[pos + 1]]) as usize;
        assert_eq!(&area[pos + 2..pos + 2 + len], &blob[..], "blob at {pos}");
        starts.push(pos);
        pos += 2 + len;
    }
    assert_eq!(starts, vec![1, 20, 252, 269, 291, 305]);
    assert_eq!(pos, 319);
    assert!(
        area[pos..].iter().all(|&b| b == 0),
        "zero padding up to header_size"
    );
}

#[test]
fn header_bytes_are_identical_to_proxmox() {
    let inp = inputs();
    let ours = write(&inp, &interleaved(&inp));
    let theirs = reference();
    assert_eq!(
        &ours[..12800],
        &theirs[..12800],
        "header bytes differ from ref-two-disks.vma"
    );
}

/// Replaying the reference archive's cluster order must give Proxmox's archive, byte for byte.
#[test]
fn same_order_gives_the_reference_archive_byte_for_byte() {
    let theirs = reference();
    let mut sr = StreamReader::new(&theirs[..]).unwrap();
    let mut order = Vec::new();
    while let Some(e) = sr.next_extent().unwrap() {
        order.extend(e.clusters().map(|c| (c.dev_id, c.cluster)));
    }
    let ours = write(&inputs(), &order);
    assert!(
        write_with(&inputs(), &order, true, false) == ours,
        "the background output thread wrote different bytes"
    );
    let inp = inputs();
    assert!(
        inp.a.chunks(CS).any(|c| c.iter().all(|&b| b == 0)),
        "the inputs must hold an all-zero cluster for this check"
    );
    assert!(
        write_with(&inp, &order, true, true) == ours,
        "write_zero_cluster differs from write_cluster with zeros"
    );
    assert_eq!(ours.len(), theirs.len());
    // Compare extent headers first, for a readable failure.
    let mut off = 12800;
    while off < theirs.len() {
        let t: &[u8; EXTENT_HEADER_SIZE] =
            theirs[off..off + EXTENT_HEADER_SIZE].try_into().unwrap();
        let o: &[u8; EXTENT_HEADER_SIZE] = ours[off..off + EXTENT_HEADER_SIZE].try_into().unwrap();
        assert_eq!(
            RawExtentHeader::parse(o),
            RawExtentHeader::parse(t),
            "extent at {off}"
        );
        off += EXTENT_HEADER_SIZE + RawExtentHeader::parse(t).block_count as usize * 4096;
    }
    assert!(ours == theirs, "archive bytes differ");
}

/// An output that fails once `limit` bytes have been accepted.
struct FailingAfter {
    limit: usize,
    taken: usize,
}

impl std::io::Write for FailingAfter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.taken >= self.limit {
            return Err(std::io::Error::other("disk full (test)"));
        }
        let n = b.len().min(self.limit - self.taken);
        self.taken += n;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A write error on the background thread reaches the caller with the
/// failing offset and the cause, and the writer stays failed.
#[test]
fn background_output_reports_the_write_error_and_its_offset() {
    let inp = inputs();
    let limit = 20_000; // inside the first extent, after the 12800-byte header
    let mut b = WriterBuilder::new();
    b.add_device("drive-scsi0", inp.a.len() as u64).unwrap();
    let w = b
        .build_background(FailingAfter { limit, taken: 0 })
        .unwrap();
    let mut first_err = None;
    for c in 0..(inp.a.len().div_ceil(CS)) as u32 {
        let s = c as usize * CS;
        if let Err(e) = w.write_cluster(1, c, &inp.a[s..(s + CS).min(inp.a.len())]) {
            first_err = Some(e);
            break;
        }
    }
    let e = match first_err {
        Some(e) => e,
        None => w.finish().map(|_| ()).unwrap_err(),
    };
    let msg = e.to_string();
    assert!(msg.contains("disk full (test)"), "{msg}");
    // The header went out in one piece; the failing write is the first extent's.
    let off = e.offset().expect("a write error has an offset");
    assert!(off <= limit as u64 && off >= 12288, "offset {off}");
}
