//! Which bytes `vma extract` reads of a remote archive (`s3://`,
//! `http(s)://`), and the `-v` line saying what that cost.
//!
//! Without an index, for the whole archive, or a compressed one: ONE
//! streaming GET of the object ([`crate::input`]); streaming never seeks.
//! A plain archive read that way leaves its index (`<key>.vmaidx`, beside
//! the object, else in the cache directory), built from the headers that
//! passed by, once the restore is complete. `-d` naming a strict subset of
//! the devices of a plain archive that has an index: the header (one ranged
//! GET of 64 KiB, two for a larger header), the index (one GET), then only
//! the header and the extents holding clusters of the selected devices (and
//! of vmstate, which extract always restores), fetched in pieces of up to
//! 16 MiB, 4 at once ([`vma_format::RangeReader`]). The normal streaming
//! restore reads that stream ([`vma_format::StreamReader::set_parts`]): it
//! checks every extent header's MD5 again, and completeness for the
//! restored devices only, whose clusters are all there unless the archive
//! lacks them. An archive the index does not fit (damaged, cut inside an
//! extent) is read with the streaming GET after all, so that it fails
//! exactly as a whole read does.

use anyhow::Result;

use super::ExtractArgs;
use crate::input::Reader;

/// The object an extract read, for the `-v` line (nothing for a local archive).
#[derive(Default)]
pub struct Fetched {
    #[cfg(feature = "remote")]
    object: Option<(std::sync::Arc<vma_remote::RemoteObject>, u64, &'static str)>,
    /// A plain archive streamed whole: its index, built on the way.
    #[cfg(feature = "remote")]
    indexer: Option<std::sync::Arc<std::sync::Mutex<vma_seekable::StreamIndexer>>>,
}

impl Fetched {
    /// A remote object of `size` bytes read as `how` says.
    #[cfg(feature = "remote")]
    pub fn remote(
        object: std::sync::Arc<vma_remote::RemoteObject>,
        size: u64,
        how: &'static str,
    ) -> Fetched {
        Fetched {
            object: Some((object, size, how)),
            indexer: None,
        }
    }

    /// After a complete restore from one streaming GET of a plain archive:
    /// stores the index built on the way (beside the object, else in the
    /// cache directory), so that the next `extract -d`, `--range`, `mount`
    /// or `serve` reads no extent header from the object. Failing to store
    /// it only costs that next reader the headers (said on stderr).
    pub fn store_index(&self) {
        #[cfg(feature = "remote")]
        if let (Some((o, _, _)), Some(ix)) = (&self.object, &self.indexer) {
            let ix = std::mem::take(&mut *ix.lock().unwrap_or_else(|e| e.into_inner()));
            if let Err(e) = crate::remote::store_streamed_index(o, ix) {
                eprintln!("vma: {e:#}");
            }
        }
    }

    /// `-v`: one line on stderr with the requests sent and the bytes
    /// received (stdout keeps Proxmox's lines).
    pub fn report(&self) {
        #[cfg(feature = "remote")]
        if let Some((o, size, how)) = &self.object {
            let s = o.stats();
            eprintln!(
                "vma: fetched {} bytes in {} requests from {} ({size} bytes; {how})",
                s.bytes,
                s.requests,
                o.display()
            );
        }
    }
}

/// The archive reader for `args.file`, and what it fetches.
pub fn open(args: &ExtractArgs) -> Result<(Reader, Fetched)> {
    #[cfg(feature = "remote")]
    if let Some(url) = crate::input::remote_url(&args.file) {
        return object::open(url, args);
    }
    let (_, reader) = crate::input::open_archive(&args.file)?;
    Ok((reader, Fetched::default()))
}

#[cfg(feature = "remote")]
mod object {
    use std::io;
    use std::sync::{Arc, Mutex};

    use anyhow::{Context, Result};
    use vma_format::{IndexedReader, RangeOptions, RangeReader, ReadAt, StreamReader};
    use vma_remote::RemoteObject;

    use super::{ExtractArgs, Fetched};
    use crate::input::{reader_from, Reader};

    /// The object, with its first bytes (the header) kept in memory.
    struct Headed {
        head: Vec<u8>,
        object: Arc<RemoteObject>,
    }

    impl ReadAt for Headed {
        fn read_at_offset(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
            match usize::try_from(offset) {
                Ok(at) if at < self.head.len() => self.head.read_at_offset(offset, buf),
                _ => self.object.read_into(offset, buf),
            }
        }
        fn size(&self) -> io::Result<u64> {
            self.object.size()
        }
    }

    /// See the module documentation.
    pub(super) fn open(url: &str, args: &ExtractArgs) -> Result<(Reader, Fetched)> {
        let object = Arc::new(RemoteObject::open(url)?);
        if !args.drives.is_empty() && !args.salvage {
            if let Some(r) = open_selected(&object, args)? {
                return Ok(r);
            }
        }
        let stream = object.stream()?;
        let size = object.size()?;
        // A plain archive's index is built on the way (its header and
        // extent headers pass by anyway) and stored once the restore is
        // complete: the next reader of some disks fetches only theirs.
        let indexer = Arc::new(Mutex::new(vma_seekable::StreamIndexer::new()));
        let stream = Indexing {
            inner: Box::new(stream),
            indexer: indexer.clone(),
        };
        let (compression, reader) = reader_from(Box::new(stream), true)?;
        let mut fetched = Fetched::remote(object, size, "one streaming GET");
        if compression == vma_format::Compression::None && !args.salvage {
            fetched.indexer = Some(indexer);
        }
        Ok((reader, fetched))
    }

    /// The object's bytes, fed to the index builder as they pass.
    struct Indexing {
        inner: Box<dyn io::Read + Send>,
        indexer: Arc<Mutex<vma_seekable::StreamIndexer>>,
    }

    impl io::Read for Indexing {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = self.inner.read(buf)?;
            self.indexer
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .feed(&buf[..n]);
            Ok(n)
        }
    }

    /// The reader of only the selected devices' extents; `None` when the
    /// streaming GET is the way (compressed, every device selected, damage).
    fn open_selected(
        object: &Arc<RemoteObject>,
        args: &ExtractArgs,
    ) -> Result<Option<(Reader, Fetched)>> {
        let (head, plain) = object.head()?;
        if !plain {
            return Ok(None);
        }
        let Ok(header) = vma_format::read_header(&mut &head[..]) else {
            return Ok(None);
        };
        // Unknown names fail here, before any more requests.
        let drives = super::super::drive_filter(&args.drives, &header)?;
        let ids: Vec<u8> = header
            .devices
            .iter()
            .filter(|d| {
                d.id != 255
                    && (d.is_vmstate() || drives.as_ref().is_none_or(|s| s.contains(&d.name)))
            })
            .map(|d| d.id)
            .collect();
        if ids.len() == header.devices.len() {
            return Ok(None);
        }
        let size = object.size()?;
        let source = Arc::new(Headed {
            head: head.clone(),
            object: object.clone(),
        });
        // The index beside the object (or in the cache directory): then
        // opening reads no extent header.
        let mut opts = vma_seekable::SeekOptions::default();
        opts.notice = Some(Arc::new(|m: &str| eprintln!("vma: {m}")));
        // Without one, the streaming GET does the work (and builds it).
        let Some(indexed) = crate::remote::open_object(
            object.clone(),
            Some(head),
            &opts,
            crate::index::cache_dir(None),
            false,
        )?
        else {
            return Ok(None);
        };
        let index = match IndexedReader::open(indexed.seekable.source) {
            Ok(ix) => ix,
            Err(e @ vma_format::Error::Read { .. }) => {
                return Err(e).with_context(|| format!("can't read {}", object.display()))
            }
            // Damage: the streaming read reports it as for any archive.
            Err(_) => return Ok(None),
        };
        let parts = index.extents_for(&ids);
        let end = index.completeness().end;
        drop(index);
        let ranges: Vec<_> = parts.iter().map(|p| p.range.clone()).collect();
        let stream = RangeReader::new(source, &ranges, RangeOptions::default());
        let stream: Box<dyn io::Read + Send> = Box::new(stream);
        let mut reader: Reader = StreamReader::new(stream)?;
        reader.set_parts(parts, end);
        let fetched = Fetched::remote(
            object.clone(),
            size,
            "index, then the selected devices' extents only",
        );
        Ok(Some((reader, fetched)))
    }
}
