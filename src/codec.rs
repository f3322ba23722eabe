//! The protobuf codec of every generated Hangar client and server: prost's, with smaller
//! buffers, a message's whole size reserved before it is encoded, and messages decoded from one
//! contiguous `Bytes`.
//!
//! tonic allocates each call's encode buffer up front (8 KiB by default) and keeps it, grown to
//! the largest batch it encoded, for the life of the call; with a thousand `WatchNodes` streams
//! that buffer was most of a watcher's memory on the controller. Hangar's messages are mostly
//! a few hundred bytes: a buffer starts at 1 KiB and grows when a message needs it (a page of
//! nodes), and one poll of a stream encodes at most 8 KiB of queued messages before the bytes
//! go out, so a burst leaves no 32 KiB buffer behind on every stream. The measurements are in
//! BENCHMARKS.md ("Smaller codec buffers").
//!
//! A small starting buffer must not make large messages dear, though: prost's encoder writes
//! into the buffer as it goes, and a page of a thousand nodes (half a megabyte) grew it by
//! doubling, copying it ten times. [`HangarEncoder`] reserves the message's size first. And
//! prost decodes much faster from `Bytes` than through tonic's `DecodeBuf`, whose every read is
//! a bounds-checked call: [`HangarDecoder`] takes the message's bytes out of the buffer (no copy)
//! and decodes from them. BENCHMARKS.md, "list".

use prost::Message;
use prost::bytes::Buf;
use std::marker::PhantomData;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Initial size of a call's encode and decode buffers.
const BUFFER_SIZE: usize = 1024;
/// Encoded bytes after which a stream hands what it has to the transport.
const YIELD_THRESHOLD: usize = 8 * 1024;

/// [`ProstCodec`] with Hangar's buffer sizes; `build.rs` names it as the generated code's codec.
#[derive(Debug, Clone)]
pub struct HangarCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for HangarCodec<T, U> {
    fn default() -> Self {
        HangarCodec(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

impl<T, U> Codec for HangarCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = HangarEncoder<T>;
    type Decoder = HangarDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        HangarEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        HangarDecoder(PhantomData)
    }
}

/// Encodes `T` into a buffer that first makes room for all of it.
#[derive(Debug, Clone)]
pub struct HangarEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for HangarEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // The size once: `Message::encode` would compute it again to check the room reserved.
        buf.reserve(item.encoded_len());
        item.encode_raw(buf);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        settings()
    }
}

/// Decodes `U` from the message's bytes, split off the call's buffer without a copy.
#[derive(Debug, Clone)]
pub struct HangarDecoder<U>(PhantomData<U>);

impl<U: Message + Default> Decoder for HangarDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let bytes = buf.copy_to_bytes(buf.remaining());
        // As prost's codec answers a message that does not parse (gRPC's status codes: INTERNAL).
        U::decode(bytes).map(Some).map_err(|err| Status::internal(err.to_string()))
    }

    fn buffer_settings(&self) -> BufferSettings {
        settings()
    }
}
