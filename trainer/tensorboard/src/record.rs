//! TFRecord framing, the container of TensorBoard event files: each record is its length
//! (u64 LE), the masked CRC32C of those 8 bytes, the data, and the masked CRC32C of the data.

/// The CRC32C of `bytes`, masked as TensorFlow does (so that CRCs of data holding CRCs do not
/// degenerate).
pub fn masked_crc32c(bytes: &[u8]) -> u32 {
    let crc = crc32c::crc32c(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

/// Appends one record holding `data` to `out`.
pub fn frame(data: &[u8], out: &mut Vec<u8>) {
    let len = (data.len() as u64).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&masked_crc32c(&len).to_le_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(&masked_crc32c(data).to_le_bytes());
}

/// The records of a file's bytes, in order, up to the first one that is torn (a writer killed
/// mid-record) or fails its checksums: what follows it cannot be trusted.
pub fn records(mut bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while bytes.len() >= 12 {
        let (len_bytes, rest) = bytes.split_at(8);
        let len_crc = u32::from_le_bytes(rest[..4].try_into().expect("4 bytes"));
        if masked_crc32c(len_bytes) != len_crc {
            break;
        }
        let len = u64::from_le_bytes(len_bytes.try_into().expect("8 bytes"));
        let rest = &rest[4..];
        let Some(total) = usize::try_from(len).ok().and_then(|l| l.checked_add(4)) else {
            break;
        };
        if rest.len() < total {
            break;
        }
        let (data, crc) = rest[..total].split_at(total - 4);
        if masked_crc32c(data) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
            break;
        }
        out.push(data);
        bytes = &rest[total..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Framing round-trips and damage stops the reading (that TensorBoard's own reader accepts
    /// the files is checked by the CLI tests).
    #[test]
    fn records_round_trip_and_stop_at_damage() {
        let mut file = Vec::new();
        for data in [&b"first"[..], b"", b"third record"] {
            frame(data, &mut file);
        }
        assert_eq!(records(&file), vec![&b"first"[..], b"", b"third record"]);
        // A torn last record (killed mid-write) leaves the whole ones before it.
        assert_eq!(records(&file[..file.len() - 3]).len(), 2);
        // A flipped bit in the second record's data ends the reading there.
        let mut bad = file.clone();
        let second_data = 12 + 5 + 4 + 12;
        bad[second_data - 1] ^= 1;
        assert_eq!(records(&bad), vec![&b"first"[..]]);
    }

    /// CRC32C ("castagnoli") of "123456789" is 0xE3069283 (RFC 3720's check value).
    #[test]
    fn the_checksum_is_crc32c() {
        assert_eq!(crc32c::crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(
            masked_crc32c(b"123456789"),
            0xE306_9283u32.rotate_right(15).wrapping_add(0xa282_ead8)
        );
    }
}
