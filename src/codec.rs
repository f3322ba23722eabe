//! The protobuf codec of every generated Hangar client and server: prost's, with smaller
//! buffers.
//!
//! tonic allocates each call's encode buffer up front (8 KiB by default) and keeps it, grown to
//! the largest batch it encoded, for the life of the call; with a thousand `WatchNodes` streams
//! that buffer was most of a watcher's memory on the controller. Hangar's messages are mostly
//! a few hundred bytes: a buffer starts at 1 KiB and grows when a message needs it (a page of
//! nodes), and one poll of a stream encodes at most 8 KiB of queued messages before the bytes
//! go out, so a burst leaves no 32 KiB buffer behind on every stream. The measurements are in
//! BENCHMARKS.md ("Smaller codec buffers").

use std::marker::PhantomData;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

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
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
