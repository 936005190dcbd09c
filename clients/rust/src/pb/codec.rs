//! The protobuf codec of every Switchyard gRPC service and client (named by
//! `build.rs` as the generated code's codec).
//!
//! It is tonic's prost codec with two differences on decoding, both about
//! input a peer controls:
//! - a message that cannot be decoded (invalid UTF-8 in a string, a
//!   truncated field, garbage) is `INVALID_ARGUMENT`, the sender's fault,
//!   not `INTERNAL`; the message quotes at most a short part of the cause;
//! - nesting is bounded by [`MAX_MESSAGE_DEPTH`], checked by an iterative
//!   scan of the wire bytes against the message's descriptor before prost
//!   decodes (prost's own limit, 100 levels, is turned off: it allowed only
//!   33 levels of JSON in a payload). The scan runs only on messages long
//!   enough to nest that deep (two bytes a level at least), so a typical
//!   request pays nothing for it.
//!
//! Owns nothing else; it must not know about tasks.

use std::marker::PhantomData;
use std::sync::OnceLock;

use prost::{Message, Name};
use prost_reflect::{DescriptorPool, Kind, MessageDescriptor};
use tonic::codec::{Codec, DecodeBuf, Decoder};
use tonic::Status;

/// The deepest JSON a payload, a result or a signal may hold (an object or
/// an array counts one level each).
pub const MAX_PAYLOAD_DEPTH: usize = 64;

/// The deepest message nesting decoded. Each JSON level of a
/// `google.protobuf.Struct` is three message levels (the `Struct`, its map
/// entry, the `Value`), and a few more wrap the payload in its request.
pub const MAX_MESSAGE_DEPTH: usize = 3 * MAX_PAYLOAD_DEPTH + 8;

/// The codec: prost's encoder, and [`CheckedDecoder`].
#[derive(Debug, Clone)]
pub struct ProstCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for ProstCodec<T, U> {
    fn default() -> Self {
        ProstCodec { _pd: PhantomData }
    }
}

impl<T, U> Codec for ProstCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Name + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = CheckedDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::default()
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckedDecoder { _pd: PhantomData }
    }
}

/// Decodes `U`, refusing undecodable and too deeply nested messages with
/// `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct CheckedDecoder<U> {
    _pd: PhantomData<U>,
}

impl<U: Message + Name + Default> Decoder for CheckedDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        use bytes::Buf;
        check_depth::<U>(buf.chunk())?;
        U::decode(buf).map(Some).map_err(decode_error)
    }
}

/// Refuses a message of type `U` that nests deeper than [`MAX_MESSAGE_DEPTH`]
/// or holds a group.
fn check_depth<U: Name>(bytes: &[u8]) -> Result<(), Status> {
    if bytes.len() < 2 * MAX_MESSAGE_DEPTH {
        return Ok(());
    }
    let Some(desc) = descriptor(&U::full_name()) else {
        return Ok(());
    };
    match scan(&desc, bytes, MAX_MESSAGE_DEPTH) {
        Scan::Fine => Ok(()),
        Scan::TooDeep => Err(Status::invalid_argument(format!(
            "the message nests deeper than {MAX_MESSAGE_DEPTH} levels \
             (a payload may hold at most {MAX_PAYLOAD_DEPTH} levels of JSON)"
        ))),
        Scan::Group => Err(Status::invalid_argument(
            "the message could not be decoded: it holds a group, which no Switchyard message has",
        )),
    }
}

fn decode_error(e: prost::DecodeError) -> Status {
    Status::invalid_argument(format!(
        "the message could not be decoded: {}",
        cut(&e.to_string(), 256)
    ))
}

/// At most `max` bytes of `s`, on a character boundary, with `…` when cut:
/// the rule of the server's `domain::text::cut`, which this crate cannot
/// import (the server depends on it, not the reverse). Unlike the worker's
/// `truncate_utf8`, the mark may take the text past `max`: this is a
/// message for a reader, not a field with a hard limit.
fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn descriptor(full_name: &str) -> Option<MessageDescriptor> {
    static POOL: OnceLock<Option<DescriptorPool>> = OnceLock::new();
    POOL.get_or_init(|| DescriptorPool::decode(super::FILE_DESCRIPTOR_SET).ok())
        .as_ref()?
        .get_message_by_name(full_name)
}

/// What [`scan`] found.
#[derive(Debug, PartialEq, Eq)]
enum Scan {
    /// Within the depth (or malformed in a way prost will refuse).
    Fine,
    /// Nested deeper than allowed.
    TooDeep,
    /// A group (wire types 3 and 4): prost would recurse to skip it.
    Group,
}

/// Walks the wire bytes of a `desc` message without recursion and tells
/// whether its known message fields nest deeper than `max`. Malformed input
/// ends the walk as [`Scan::Fine`]: prost then refuses it at the same place,
/// having gone no deeper than the walk did.
fn scan(desc: &MessageDescriptor, bytes: &[u8], max: usize) -> Scan {
    let mut stack: Vec<(MessageDescriptor, usize)> = vec![(desc.clone(), bytes.len())];
    let mut pos = 0usize;
    while let Some((d, end)) = stack.last() {
        let end = *end;
        if pos >= end {
            stack.pop();
            continue;
        }
        let Some((key, n)) = varint(&bytes[pos..end]) else {
            return Scan::Fine;
        };
        pos += n;
        match key & 7 {
            0 => match varint(&bytes[pos..end]) {
                Some((_, n)) => pos += n,
                None => return Scan::Fine,
            },
            1 => pos += 8,
            5 => pos += 4,
            2 => {
                let Some((len, n)) = varint(&bytes[pos..end]) else {
                    return Scan::Fine;
                };
                pos += n;
                let Some(sub_end) = usize::try_from(len)
                    .ok()
                    .and_then(|l| pos.checked_add(l))
                    .filter(|e| *e <= end)
                else {
                    return Scan::Fine;
                };
                let field = u32::try_from(key >> 3).ok().and_then(|f| d.get_field(f));
                match field.map(|f| f.kind()) {
                    Some(Kind::Message(m)) => {
                        if stack.len() >= max {
                            return Scan::TooDeep;
                        }
                        stack.push((m, sub_end));
                    }
                    _ => pos = sub_end,
                }
            }
            3 | 4 => return Scan::Group,
            _ => return Scan::Fine,
        }
    }
    Scan::Fine
}

fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, byte) in b.iter().take(10).enumerate() {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb;

    /// A `ScheduleTaskRequest` whose payload nests `levels` JSON objects
    /// (`{"a": {"a": …}}`), written directly as bytes: building such a
    /// value as a `Struct` would overflow the stack when it is dropped.
    /// Every level is a prefix (tag and length) before the next, so the
    /// sizes are found innermost first and the prefixes written outermost
    /// first.
    fn request(levels: usize) -> Vec<u8> {
        use prost::encoding::{encode_varint, encoded_len_varint};
        // (struct size, entry size, value size) of each level, innermost first.
        let mut sizes = Vec::with_capacity(levels);
        let mut inner = 0usize; // the innermost Struct is empty
        for _ in 1..levels {
            let value = 1 + encoded_len_varint(inner as u64) + inner;
            let entry = 3 + 1 + encoded_len_varint(value as u64) + value;
            let st = 1 + encoded_len_varint(entry as u64) + entry;
            sizes.push((inner, entry, value));
            inner = st;
        }
        let mut out = vec![0x0a, 0x01, b'n', 0x12]; // name = "n", payload = 2
        encode_varint(inner as u64, &mut out);
        for &(inner, entry, value) in sizes.iter().rev() {
            out.push(0x0a); // Struct.fields = 1
            encode_varint(entry as u64, &mut out);
            out.extend([0x0a, 0x01, b'a', 0x12]); // key = "a", value = 2
            encode_varint(value as u64, &mut out);
            out.push(0x2a); // Value.struct_value = 5
            encode_varint(inner as u64, &mut out);
        }
        out
    }

    fn decode(bytes: &[u8]) -> Result<pb::ScheduleTaskRequest, Status> {
        check_depth::<pb::ScheduleTaskRequest>(bytes)?;
        pb::ScheduleTaskRequest::decode(bytes).map_err(decode_error)
    }

    #[test]
    fn sixty_four_levels_of_json_decode_and_sixty_five_do_not() {
        let desc = descriptor("switchyard.v1.ScheduleTaskRequest").expect("descriptor");
        assert_eq!(scan(&desc, &request(64), MAX_MESSAGE_DEPTH), Scan::Fine);
        let ok = decode(&request(64)).expect("64 levels decode");
        assert!(ok.payload.is_some());
        let e = decode(&request(70)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("deeper"), "{}", e.message());
        // Far deeper than any stack would take if decoded recursively.
        let e = decode(&request(10_000)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn garbage_and_bad_utf8_are_invalid_argument() {
        for bytes in [
            vec![0xff, 0xff, 0xff],
            // field 1 (name), length 2, invalid UTF-8.
            vec![0x0a, 0x02, 0xc3, 0x28],
            // A group start.
            vec![0x0b, 0x0c],
        ] {
            let e = decode(&bytes).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bytes:?}");
            assert!(e.message().len() < 400);
        }
    }
}
