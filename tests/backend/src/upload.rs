//! Reading a request body (content-length or chunked) into a running digest, so tests can check
//! that an upload arrived whole through the proxy without the backend buffering it.

use std::io::{BufRead, Read};

/// FNV-1a, 64 bit: enough to tell a corrupted or truncated upload from the original.
pub fn fnv1a(digest: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(digest, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100000001b3))
}

pub const FNV_OFFSET: u64 = 0xcbf29ce484222325;

/// Bytes read and their digest.
pub fn read_body(reader: &mut impl BufRead, chunked: bool, length: Option<u64>) -> std::io::Result<(u64, u64)> {
    let mut total = 0u64;
    let mut digest = FNV_OFFSET;
    let mut buf = vec![0u8; 64 * 1024];
    let mut take = |reader: &mut dyn Read, mut n: u64, total: &mut u64, digest: &mut u64| -> std::io::Result<()> {
        while n > 0 {
            let want = n.min(buf.len() as u64) as usize;
            let got = reader.read(&mut buf[..want])?;
            if got == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "body ended early"));
            }
            *digest = fnv1a(*digest, &buf[..got]);
            *total += got as u64;
            n -= got as u64;
        }
        Ok(())
    };
    if chunked {
        loop {
            let mut line = String::new();
            reader.read_line(&mut line)?;
            let size = u64::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "bad chunk size"))?;
            if size == 0 {
                // Trailers, then the final empty line.
                loop {
                    let mut trailer = String::new();
                    if reader.read_line(&mut trailer)? == 0 || trailer.trim().is_empty() {
                        return Ok((total, digest));
                    }
                }
            }
            take(reader, size, &mut total, &mut digest)?;
            let mut crlf = String::new();
            reader.read_line(&mut crlf)?;
        }
    }
    take(reader, length.unwrap_or(0), &mut total, &mut digest)?;
    Ok((total, digest))
}
