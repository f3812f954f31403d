//! The codec of every generated service: prost, except that a request that
//! does not decode (truncated, a string field that is not UTF-8, a wrong
//! wire type) is the caller's `INVALID_ARGUMENT` with an error detail,
//! where tonic's default codec answers `INTERNAL` with none, which a
//! client cannot tell apart from a node's own failure.

use std::marker::PhantomData;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstEncoder};

use crate::errors::{ErrorKind, status};

/// prost with strict decode errors (see the module docs).
#[derive(Debug, Clone)]
pub struct Codec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for Codec<T, U> {
    fn default() -> Self {
        Codec { _pd: PhantomData }
    }
}

impl<T, U> tonic::codec::Codec for Codec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = StrictDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        StrictDecoder { _pd: PhantomData }
    }
}

/// Decodes `U`; a decode error is `INVALID_ARGUMENT` with a detail.
#[derive(Debug, Clone)]
pub struct StrictDecoder<U> {
    _pd: PhantomData<U>,
}

impl<U: Message + Default> Decoder for StrictDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        decode_strict(buf).map(Some)
    }
}

/// `U` from `buf`; a decode error is `INVALID_ARGUMENT` with a detail.
pub fn decode_strict<U: Message + Default>(buf: impl prost::bytes::Buf) -> Result<U, Status> {
    U::decode(buf).map_err(|e| {
        status(
            tonic::Code::InvalidArgument,
            ErrorKind::InvalidArgument,
            format!("the message does not decode: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::detail;
    use crate::v1::UserStatusRequest;

    #[test]
    fn undecodable_bytes_are_an_invalid_argument_with_a_detail() {
        for bytes in [
            &[0x0a, 0x10, b'a'][..],   // a string cut short
            &[0x0a, 0x02, 0xff, 0xfe], // a string that is not UTF-8
            &[0x0b],                   // a wire type prost refuses
        ] {
            let err = decode_strict::<UserStatusRequest>(bytes).expect_err("must not decode");
            assert_eq!(err.code(), tonic::Code::InvalidArgument, "{bytes:02x?}");
            let d = detail(&err).expect("a detail");
            assert_eq!(d.kind, ErrorKind::InvalidArgument as i32);
        }
        let good = UserStatusRequest {
            user_id: "alice".into(),
        };
        let bytes = good.encode_to_vec();
        assert_eq!(
            decode_strict::<UserStatusRequest>(&bytes[..]).unwrap(),
            good
        );
    }
}
