//! The discovery response as the stream builds it: pre-encoded resources, concatenated by a small
//! tonic codec instead of encoding a `DiscoveryResponse` per proxy.
//!
//! A changed resource is encoded once, when the catalog changes ([`super::catalog::Entry`]'s
//! `encoded`); every stream that sends it shares those bytes. A protobuf message is the
//! concatenation of its encoded fields, so a `DiscoveryResponse` is written as: `nonce` (field 2),
//! then each resource as a length-delimited field 3 whose content is the pre-encoded
//! `DiscoveryResource`, then each removed key as field 4. prost's encoding functions write the tags
//! and lengths; the bytes on the wire are exactly those of the generated message (see the test).

use bytes::{BufMut, Bytes};
use prost::encoding::{self, WireType};
use shoal_proto::v1;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use super::catalog::{Key, wire_key};

/// One `DiscoveryResponse`, ready to encode.
#[derive(Debug, Default)]
pub struct Response {
    /// Unique per response on the stream; the proxy quotes it in its ACK or NACK.
    pub nonce: u64,
    /// Encoded `DiscoveryResource`s (shared with the catalog and other streams).
    pub resources: Vec<Bytes>,
    /// Keys sent as removed.
    pub removed: Vec<Key>,
}

impl Response {
    /// The encoded size of the resources so far (the stream bounds responses by it).
    pub fn resource_bytes(&self) -> usize {
        self.resources.iter().map(Bytes::len).sum()
    }

    fn encode_to(&self, buf: &mut impl BufMut) {
        // `version` (field 1) is empty, so not on the wire.
        encoding::string::encode(2, &self.nonce.to_string(), buf);
        for r in &self.resources {
            encoding::encode_key(3, WireType::LengthDelimited, buf);
            encoding::encode_varint(r.len() as u64, buf);
            buf.put_slice(r);
        }
        for k in &self.removed {
            encoding::message::encode(4, &wire_key(k), buf);
        }
    }
}

/// Per-stream codec buffers: tonic allocates one encode buffer and one decode buffer of
/// `buffer_size` per stream and keeps them (grown to the largest message) for the stream's life.
/// Requests are small (ACKs), so their buffer is small; responses are bounded by the stream
/// (`stream::RESPONSE_BYTES`) to fit the encode buffer.
const ENCODE_BUFFER: usize = 8 * 1024;
const DECODE_BUFFER: usize = 1024;
/// Responses batched into one HTTP/2 write at most (tonic's default: 32 KiB).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// The discovery codec: [`Response`] out, prost-decoded `DiscoveryRequest` in.
#[derive(Debug, Default, Clone, Copy)]
pub struct DiscoveryCodec;

impl Codec for DiscoveryCodec {
    type Encode = Response;
    type Decode = v1::DiscoveryRequest;
    type Encoder = ResponseEncoder;
    type Decoder = RequestDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ResponseEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder(tonic_prost::ProstDecoder::new(BufferSettings::new(
            DECODE_BUFFER,
            YIELD_THRESHOLD,
        )))
    }
}

/// Writes a [`Response`] (see the module documentation).
#[derive(Debug)]
pub struct ResponseEncoder;

impl Encoder for ResponseEncoder {
    type Item = Response;
    type Error = Status;

    fn encode(&mut self, item: Response, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        item.encode_to(dst);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(ENCODE_BUFFER, YIELD_THRESHOLD)
    }
}

/// prost's decoder with a small buffer.
#[derive(Debug)]
pub struct RequestDecoder(tonic_prost::ProstDecoder<v1::DiscoveryRequest>);

impl Decoder for RequestDecoder {
    type Item = v1::DiscoveryRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        self.0.decode(src)
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;
    use shoal_proto::v1::{ResourceType, discovery_resource::Payload};

    use super::*;
    use crate::discovery::catalog::key;

    #[test]
    fn concatenated_response_decodes_as_the_generated_message() {
        let resource = v1::DiscoveryResource {
            key: Some(v1::ResourceKey {
                r#type: ResourceType::Endpoints as i32,
                name: "web.default".into(),
            }),
            version: "00000000000000ff".into(),
            payload: Some(Payload::Endpoints(v1::Endpoints {
                service: "web.default".into(),
                endpoints: vec![v1::Endpoint {
                    address: "10.0.0.1".into(),
                    port: 8080,
                    weight: 1,
                    ready: true,
                    ..Default::default()
                }],
            })),
        };
        let response = Response {
            nonce: 42,
            resources: vec![
                resource.encode_to_vec().into(),
                resource.encode_to_vec().into(),
            ],
            removed: vec![key(ResourceType::Route, "web.default")],
        };
        let mut buf = Vec::new();
        response.encode_to(&mut buf);
        let expected = v1::DiscoveryResponse {
            version: String::new(),
            nonce: "42".into(),
            resources: vec![resource.clone(), resource],
            removed: vec![v1::ResourceKey {
                r#type: ResourceType::Route as i32,
                name: "web.default".into(),
            }],
        };
        assert_eq!(buf, expected.encode_to_vec());
        assert_eq!(v1::DiscoveryResponse::decode(&buf[..]).unwrap(), expected);
    }
}
