//! A gzip stream (RFC 1952) whose deflate level can change between tar
//! entries: the manifest is compressed, images (PNG, JPEG, WebP: already
//! compressed, deflate cannot shrink them) are written as deflate's stored
//! blocks, which costs a copy and a CRC instead of a search for matches
//! that never pay off.
//!
//! flate2's encoder keeps one level for the whole stream. Here compressed
//! stretches go through miniz_oxide's compressor (the one flate2 uses) and
//! stored stretches are framed directly (RFC 1951 §3.2.4: a byte-aligned
//! header, LEN, NLEN, the bytes). Before a stored stretch the compressor
//! does a full flush — byte-aligned, and its dictionary reset, so nothing
//! it writes afterwards refers back across bytes it never saw. The package
//! stays one gzip member that every gunzip reads, including decoders that
//! stop after the first member. Reproducible: no name and no time in the
//! header, and the same input with the same levels gives the same bytes.

use std::io::{self, Write};

use miniz_oxide::deflate::core::{
    CompressorOxide, TDEFLFlush, TDEFLStatus, compress, create_comp_flags_from_zip_params,
};

/// Levels: deflate's, and 0 for stored blocks.
pub const COMPRESS: u8 = 6;
pub const STORE: u8 = 0;

const OUT_CHUNK: usize = 128 * 1024;
/// A stored block holds at most this many bytes (LEN is 16 bits).
const STORED_MAX: usize = 65_535;

/// Header: magic, deflate, no flags, mtime 0, no extra flags, OS unknown.
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

pub struct LeveledGz<W: Write> {
    inner: W,
    deflate: Box<CompressorOxide>,
    crc: crc32fast::Hasher,
    /// Input length modulo 2^32 (the trailer's ISIZE).
    len: u32,
    level: u8,
    out: Vec<u8>,
}

impl<W: Write> LeveledGz<W> {
    pub fn new(mut inner: W, level: u8) -> io::Result<Self> {
        inner.write_all(&HEADER)?;
        // Negative window bits: raw deflate (gzip has its own framing).
        let compress_level = if level == STORE { COMPRESS } else { level };
        let flags = create_comp_flags_from_zip_params(i32::from(compress_level), -15, 0);
        Ok(Self {
            inner,
            deflate: Box::new(CompressorOxide::new(flags)),
            crc: crc32fast::Hasher::new(),
            len: 0,
            level,
            out: vec![0; OUT_CHUNK],
        })
    }

    /// Applies to what is written from now on.
    pub fn set_level(&mut self, level: u8) -> io::Result<()> {
        if level == self.level {
            return Ok(());
        }
        if level == STORE {
            // Aligned, and the dictionary forgotten (see the module docs).
            self.pump(&[], TDEFLFlush::Full)?;
        } else {
            self.deflate.set_compression_level_raw(level);
        }
        self.level = level;
        Ok(())
    }

    /// Feeds `input` through the compressor and writes what comes out.
    fn pump(&mut self, mut input: &[u8], flush: TDEFLFlush) -> io::Result<()> {
        loop {
            let (status, read, written) = compress(&mut self.deflate, input, &mut self.out, flush);
            self.inner.write_all(&self.out[..written])?;
            input = &input[read..];
            match status {
                TDEFLStatus::Done => return Ok(()),
                TDEFLStatus::Okay => {
                    // More may be pending only when the output chunk filled.
                    let finishing = matches!(flush, TDEFLFlush::Finish);
                    if input.is_empty() && written < self.out.len() && !finishing {
                        return Ok(());
                    }
                }
                TDEFLStatus::BadParam | TDEFLStatus::PutBufFailed => {
                    return Err(io::Error::other(format!("deflate failed: {status:?}")));
                }
            }
        }
    }

    /// Stored blocks, not final (the compressor ends the stream).
    fn store(&mut self, input: &[u8]) -> io::Result<()> {
        for block in input.chunks(STORED_MAX) {
            let len = block.len() as u16;
            let [l0, l1] = len.to_le_bytes();
            let [n0, n1] = (!len).to_le_bytes();
            self.inner.write_all(&[0, l0, l1, n0, n1])?;
            self.inner.write_all(block)?;
        }
        Ok(())
    }

    /// Ends the stream (the trailer: CRC-32 and length) and gives the
    /// writer back.
    pub fn finish(mut self) -> io::Result<W> {
        self.pump(&[], TDEFLFlush::Finish)?;
        let crc = self.crc.clone().finalize();
        self.inner.write_all(&crc.to_le_bytes())?;
        self.inner.write_all(&self.len.to_le_bytes())?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for LeveledGz<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.level == STORE {
            self.store(buf)?;
        } else {
            self.pump(buf, TDEFLFlush::None)?;
        }
        self.crc.update(buf);
        self.len = self.len.wrapping_add(buf.len() as u32);
        Ok(buf.len())
    }

    /// Writes what the compressor has so far (a sync flush: a few bytes).
    fn flush(&mut self) -> io::Result<()> {
        if self.level != STORE {
            self.pump(&[], TDEFLFlush::Sync)?;
        }
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn noise(n: usize) -> Vec<u8> {
        // xorshift: incompressible, and the same every time.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn one_member_with_both_levels_reads_back_whole() {
        let text = b"{\"files\": [\"a\", \"b\"]}\n".repeat(5_000);
        let image = noise(700_000);
        let mut gz = LeveledGz::new(Vec::new(), COMPRESS).unwrap();
        gz.write_all(&text).unwrap();
        gz.set_level(STORE).unwrap();
        gz.write_all(&image).unwrap();
        gz.set_level(COMPRESS).unwrap();
        gz.write_all(&text).unwrap();
        let packed = gz.finish().unwrap();
        // A decoder that reads only the first member sees everything.
        let mut expected = text.clone();
        expected.extend_from_slice(&image);
        expected.extend_from_slice(&text);
        assert_eq!(gunzip(&packed), expected);
        // The text was compressed, the noise stored (a few bytes of
        // block headers over its size).
        assert!(
            packed.len() < image.len() + text.len() / 4,
            "{}",
            packed.len()
        );
        assert!(packed.len() >= image.len());
    }

    #[test]
    fn the_same_input_gives_the_same_bytes() {
        let pack = || {
            let mut gz = LeveledGz::new(Vec::new(), COMPRESS).unwrap();
            gz.write_all(b"manifest").unwrap();
            gz.set_level(STORE).unwrap();
            gz.write_all(&noise(100_000)).unwrap();
            gz.finish().unwrap()
        };
        assert_eq!(pack(), pack());
    }

    #[test]
    fn an_empty_stream_is_valid_gzip() {
        let packed = LeveledGz::new(Vec::new(), STORE).unwrap().finish().unwrap();
        assert!(gunzip(&packed).is_empty());
    }
}
