//! Compression codecs of record batches (attribute bits 0-2), for the two places the broker must
//! look inside compressed records: the cleaner (which rewrites batches of compacted logs with
//! the same codec) and the key check of appends to compacted logs.
//!
//! Formats as Kafka writes them: gzip streams, snappy in the xerial framing that Java's
//! `SnappyOutputStream` writes (raw snappy is accepted on input, as Java does), LZ4 frames, and
//! zstd frames.

use std::io::{Read, Write};

/// Why records could not be (de)compressed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// Attribute bits name a codec Kafka does not define.
    #[error("unknown compression codec {0}")]
    Unknown(u8),
    /// The compressed bytes are damaged.
    #[error("{codec} data does not decompress: {reason}")]
    Corrupt {
        /// Codec name.
        codec: &'static str,
        /// What the decoder said.
        reason: String,
    },
    /// The records would decompress to more than the caller allows.
    #[error("records decompress to more than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
}

/// Codec ids in the attributes field.
pub(crate) const CODEC_NONE: u8 = 0;
const CODEC_GZIP: u8 = 1;
const CODEC_SNAPPY: u8 = 2;
const CODEC_LZ4: u8 = 3;
const CODEC_ZSTD: u8 = 4;

/// Header of the xerial snappy framing: magic, version 1, compatible version 1.
const XERIAL_MAGIC: &[u8; 16] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";
/// Uncompressed bytes per xerial block, as `SnappyOutputStream` writes them.
const XERIAL_BLOCK_BYTES: usize = 32 << 10;

fn corrupt(codec: &'static str, e: impl std::fmt::Display) -> CodecError {
    CodecError::Corrupt {
        codec,
        reason: e.to_string(),
    }
}

/// Reads all of `reader`, failing once more than `limit` bytes come out.
fn read_bounded(
    mut reader: impl Read,
    codec: &'static str,
    limit: usize,
) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    let n = reader
        .by_ref()
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| corrupt(codec, e))?;
    if n > limit {
        return Err(CodecError::TooLarge { limit });
    }
    Ok(out)
}

/// Decompresses the records section of a batch compressed with `codec`, refusing output larger
/// than `limit` bytes.
pub(crate) fn decompress(codec: u8, data: &[u8], limit: usize) -> Result<Vec<u8>, CodecError> {
    match codec {
        CODEC_NONE => Ok(data.to_vec()),
        CODEC_GZIP => read_bounded(flate2::read::GzDecoder::new(data), "gzip", limit),
        CODEC_SNAPPY => snappy_decompress(data, limit),
        CODEC_LZ4 => {
            let decoder = lz4::Decoder::new(data).map_err(|e| corrupt("lz4", e))?;
            read_bounded(decoder, "lz4", limit)
        }
        CODEC_ZSTD => {
            let decoder = zstd::stream::read::Decoder::new(data).map_err(|e| corrupt("zstd", e))?;
            read_bounded(decoder, "zstd", limit)
        }
        other => Err(CodecError::Unknown(other)),
    }
}

/// Compresses a records section with `codec`.
pub(crate) fn compress(codec: u8, data: &[u8]) -> Result<Vec<u8>, CodecError> {
    match codec {
        CODEC_NONE => Ok(data.to_vec()),
        CODEC_GZIP => {
            let mut encoder =
                flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            encoder.write_all(data).map_err(|e| corrupt("gzip", e))?;
            encoder.finish().map_err(|e| corrupt("gzip", e))
        }
        CODEC_SNAPPY => snappy_compress(data),
        CODEC_LZ4 => {
            let mut encoder = lz4::EncoderBuilder::new()
                .build(Vec::new())
                .map_err(|e| corrupt("lz4", e))?;
            encoder.write_all(data).map_err(|e| corrupt("lz4", e))?;
            let (out, result) = encoder.finish();
            result.map_err(|e| corrupt("lz4", e))?;
            Ok(out)
        }
        CODEC_ZSTD => zstd::stream::encode_all(data, 3).map_err(|e| corrupt("zstd", e)),
        other => Err(CodecError::Unknown(other)),
    }
}

fn snappy_decompress(data: &[u8], limit: usize) -> Result<Vec<u8>, CodecError> {
    let raw = |block: &[u8], out: &mut Vec<u8>| -> Result<(), CodecError> {
        let len = snap::raw::decompress_len(block).map_err(|e| corrupt("snappy", e))?;
        if out.len() + len > limit {
            return Err(CodecError::TooLarge { limit });
        }
        let start = out.len();
        out.resize(start + len, 0);
        snap::raw::Decoder::new()
            .decompress(block, &mut out[start..])
            .map_err(|e| corrupt("snappy", e))?;
        Ok(())
    };
    let mut out = Vec::new();
    let Some(mut rest) = data.strip_prefix(&XERIAL_MAGIC[..]) else {
        raw(data, &mut out)?;
        return Ok(out);
    };
    // Each round consumes a length and a block, or fails.
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err(corrupt("snappy", "truncated block length"));
        };
        let len = u32::from_be_bytes(*len) as usize;
        if tail.len() < len {
            return Err(corrupt("snappy", "truncated block"));
        }
        raw(&tail[..len], &mut out)?;
        rest = &tail[len..];
    }
    Ok(out)
}

fn snappy_compress(data: &[u8]) -> Result<Vec<u8>, CodecError> {
    let mut out = XERIAL_MAGIC.to_vec();
    let mut encoder = snap::raw::Encoder::new();
    for block in data.chunks(XERIAL_BLOCK_BYTES) {
        let compressed = encoder
            .compress_vec(block)
            .map_err(|e| corrupt("snappy", e))?;
        out.extend_from_slice(&(compressed.len() as u32).to_be_bytes());
        out.extend_from_slice(&compressed);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_codec_round_trips_and_bounds_its_output() {
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for codec in 0..=4 {
            let packed = compress(codec, &data).expect("compress");
            assert_eq!(
                decompress(codec, &packed, data.len()).expect("decompress"),
                data,
                "codec {codec}"
            );
            if codec != CODEC_NONE {
                assert!(packed.len() < data.len(), "codec {codec} compresses");
                assert!(matches!(
                    decompress(codec, &packed, data.len() - 1),
                    Err(CodecError::TooLarge { .. })
                ));
                // Truncated input never comes back as the data (batches carry a CRC besides).
                let truncated = decompress(codec, &packed[..packed.len() / 2], data.len());
                assert!(
                    truncated.map_or(true, |d| d != data),
                    "codec {codec}: truncated input"
                );
            }
        }
        assert!(matches!(compress(5, &data), Err(CodecError::Unknown(5))));
        // Raw (unframed) snappy is accepted on input.
        let raw = snap::raw::Encoder::new()
            .compress_vec(&data)
            .expect("raw snappy");
        assert_eq!(
            decompress(CODEC_SNAPPY, &raw, data.len()).expect("raw"),
            data
        );
    }
}
