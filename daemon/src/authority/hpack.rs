//! The parts of HPACK (RFC 7541) the rewriter reads and writes itself: integers, string
//! literals, the length of a representation, and Huffman-coded strings turned plain before
//! the HPACK decoder sees them.

/// An HPACK integer with an `n`-bit prefix at the start of `buf`: its value and length.
pub(super) fn decode_int(buf: &[u8], n: u8) -> Option<(usize, usize)> {
    let mask = (1usize << n) - 1;
    let mut value = usize::from(*buf.first()?) & mask;
    if value < mask {
        return Some((value, 1));
    }
    let mut shift = 0u32;
    for (i, &byte) in buf.iter().enumerate().skip(1) {
        // Five continuation bytes cover any size HTTP/2 allows; more is an attack.
        if shift > 28 {
            return None;
        }
        value += usize::from(byte & 0x7f) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// The length of the string literal at the start of `buf`, with its length prefix.
fn string_len(buf: &[u8]) -> Option<usize> {
    let (len, prefix) = decode_int(buf, 7)?;
    let total = prefix.checked_add(len)?;
    (total <= buf.len()).then_some(total)
}

/// The length of the representation at the start of `buf`.
pub(super) fn representation_len(buf: &[u8]) -> Option<usize> {
    let first = *buf.first()?;
    let (prefix_bits, literal) = match first {
        b if b & 0x80 != 0 => (7, false),
        b if b & 0xc0 == 0x40 => (6, true),
        b if b & 0xe0 == 0x20 => (5, false),
        _ => (4, true),
    };
    let (index, mut len) = decode_int(buf, prefix_bits)?;
    if literal {
        if index == 0 {
            len += string_len(&buf[len..])?;
        }
        len += string_len(&buf[len..])?;
    }
    Some(len)
}

/// `raw`, one literal representation, with each Huffman-coded string written as plain
/// octets, decoded by a table-driven decoder; `None` when it holds no Huffman-coded string or
/// one does not decode (the HPACK decoder then reads the original and reports it). The HPACK
/// decoder's own Huffman decoding builds a lookup map for every string, which made reading
/// a request's headers cost more than the rest of the request.
pub(super) fn without_huffman(raw: &[u8]) -> Option<Vec<u8>> {
    let prefix_bits = match *raw.first()? {
        b if b & 0x80 != 0 || b & 0xe0 == 0x20 => return None,
        b if b & 0xc0 == 0x40 => 6,
        _ => 4,
    };
    let (index, mut at) = decode_int(raw, prefix_bits)?;
    let strings = if index == 0 { 2 } else { 1 };
    let mut plain: Option<Vec<u8>> = None;
    let mut copied = 0;
    for _ in 0..strings {
        let string = raw.get(at..)?;
        let total = string_len(string)?;
        if string[0] & 0x80 != 0 {
            let (_, prefix) = decode_int(string, 7)?;
            let coded = &string[prefix..total];
            let mut decoded = Vec::with_capacity(total * 2);
            httlib_huffman::decode(coded, &mut decoded, httlib_huffman::DecoderSpeed::FourBits)
                .ok()?;
            if !padded_by_the_rfc(coded, &decoded) {
                return None;
            }
            let plain = plain.get_or_insert_with(|| Vec::with_capacity(raw.len() * 2));
            plain.extend_from_slice(&raw[copied..at]);
            encode_string(&decoded, plain);
            copied = at + total;
        }
        at += total;
    }
    let mut plain = plain?;
    plain.extend_from_slice(&raw[copied..]);
    Some(plain)
}

/// Whether what follows the last code of `coded` is at most seven bits, all ones (RFC 7541
/// §5.2), which the table-driven decoder does not check as strictly.
fn padded_by_the_rfc(coded: &[u8], decoded: &[u8]) -> bool {
    let bits: usize = decoded
        .iter()
        .map(|&b| usize::from(httlib_huffman::encoder::table::ENCODE_TABLE[usize::from(b)].0))
        .sum();
    let Some(padding) = (coded.len() * 8).checked_sub(bits) else {
        return false;
    };
    let ones = (1u16 << padding.min(8)) - 1;
    padding <= 7
        && coded
            .last()
            .is_none_or(|&last| u16::from(last) & ones == ones)
}

/// Appends `s` as a plain (not Huffman-coded) string literal.
pub(super) fn encode_string(s: &[u8], out: &mut Vec<u8>) {
    // The integer encoding cannot fail on a Vec.
    let _ = loona_hpack::encoder::encode_integer_into(s.len(), 7, 0, out);
    out.extend_from_slice(s);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_huffman_string_that_does_not_decode_is_left_to_the_hpack_decoder() {
        // `a` is 00011; the padding after it must be ones (RFC 7541 §5.2).
        let mut rep = vec![0x41, 0x81, 0b0001_1000];
        assert_eq!(without_huffman(&rep), None);
        rep[2] = 0b0001_1111;
        assert_eq!(without_huffman(&rep), Some(vec![0x41, 0x01, b'a']));
        // Eight bits of padding are too many.
        assert_eq!(without_huffman(&[0x41, 0x81, 0xff]), None);
        // Indexed fields and size updates hold no strings.
        assert_eq!(without_huffman(&[0x82]), None);
        assert_eq!(without_huffman(&[0x3f, 0xe1, 0x1f]), None);
        // A plain literal stays as it is.
        assert_eq!(without_huffman(&[0x41, 0x01, b'a']), None);
    }
}
