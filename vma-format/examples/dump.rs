//! Prints the structure of an archive: header, then one line per cluster.
//! `cargo run -p vma-format --example dump -- FILE`
use vma_format::{IndexedReader, StreamReader};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: dump FILE")?;
    let f = std::fs::File::open(&path)?;
    let (_, r) = vma_format::decompressor(f)?;
    let mut s = StreamReader::new(r)?;
    let h = s.header().clone();
    println!(
        "uuid {} ctime {} header_size {}",
        h.uuid,
        h.ctime,
        h.header_size()
    );
    for c in &h.configs {
        println!("config {} {} bytes", c.name_str(), c.data.len());
    }
    for d in &h.devices {
        println!("dev {} {} {}", d.id, d.name_str(), d.size);
    }
    while let Some(e) = s.next_extent()? {
        println!(
            "extent {} at {} blocks {}",
            e.index,
            e.offset,
            e.block_count()
        );
        for c in e.clusters() {
            println!(
                "  dev {} cluster {} mask {:04x}",
                c.dev_id, c.cluster, c.mask
            );
        }
    }
    println!("{:?}", s.completeness());
    if vma_format::detect(&std::fs::read(&path)?[..9]) == vma_format::Compression::None {
        let ix = IndexedReader::open(std::fs::File::open(&path)?)?;
        for d in &ix.header().devices {
            let mut off = 0;
            while let Some(m) = ix.map(d.id, off)? {
                println!("map dev {} {:?} {}..{}", d.id, m.kind, m.start, m.end);
                off = m.end;
            }
        }
        println!("index bytes {}", ix.index_bytes());
    }
    Ok(())
}
