//! The WebSocket wire format (RFC 6455) as this server speaks it; pure, so the hub can
//! encode an event's frame once and the live-updates connections read and write with it.
//! Client frames are judged by their header as soon as it has arrived — a declared length
//! over the limit, a reserved bit or opcode, a missing mask — so nothing beyond one small
//! frame is ever buffered, and fragmented messages are bounded in total the same way.

use bytes::{BufMut, Bytes, BytesMut};

/// The largest message (and so frame) a client may send; subscribe commands are tiny.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024;
/// RFC 6455 §5.5: control frames carry at most 125 bytes.
const MAX_CONTROL_PAYLOAD: usize = 125;
/// A client frame's header: 2 bytes, up to 8 of extended length, 4 of mask.
const MAX_CLIENT_HEADER: usize = 14;
/// The most a reader holds of one incomplete frame.
pub const MAX_PENDING_BYTES: usize = MAX_CLIENT_HEADER + MAX_MESSAGE_BYTES;
/// What each fragment of a message counts toward its 4 KiB besides its payload, so that
/// a stream of empty fragments ends like an oversized message does.
const FRAGMENT_COST: usize = 16;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Close codes this server sends (RFC 6455 §7.4.1).
pub mod close_code {
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    pub const PROTOCOL_ERROR: u16 = 1002;
    pub const UNSUPPORTED_DATA: u16 = 1003;
    pub const INVALID_PAYLOAD: u16 = 1007;
    pub const POLICY_VIOLATION: u16 = 1008;
    pub const TOO_BIG: u16 = 1009;
    pub const INTERNAL_ERROR: u16 = 1011;
}

/// Why a client's bytes end the connection, with the close code that says so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// A frame or message over `MAX_MESSAGE_BYTES` (1009).
    TooBig,
    /// Text that is not UTF-8 (1007).
    InvalidUtf8,
    /// A binary message: this protocol is JSON text (1003).
    Binary,
    /// Anything else RFC 6455 forbids (1002), with what it was.
    Protocol(&'static str),
}

impl Violation {
    pub fn close_code(self) -> u16 {
        match self {
            Self::TooBig => close_code::TOO_BIG,
            Self::InvalidUtf8 => close_code::INVALID_PAYLOAD,
            Self::Binary => close_code::UNSUPPORTED_DATA,
            Self::Protocol(_) => close_code::PROTOCOL_ERROR,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Self::TooBig => "message larger than 4 KiB",
            Self::InvalidUtf8 => "text is not valid UTF-8",
            Self::Binary => "binary frames are not supported",
            Self::Protocol(what) => what,
        }
    }
}

/// One complete message from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Text(String),
    Ping(Bytes),
    Pong,
    /// The client's closing handshake; the code it gave, if any.
    Close(Option<u16>),
}

struct Header {
    fin: bool,
    opcode: u8,
    header_len: usize,
    payload_len: usize,
    mask: [u8; 4],
}

/// Reads the header at the start of `bytes`: `Ok(None)` while it has not fully arrived.
/// Everything a header alone can show to be wrong is refused here, before any payload.
/// `message` is the length so far of a fragmented message in progress.
fn parse_header(bytes: &[u8], message: Option<usize>) -> Result<Option<Header>, Violation> {
    let [first, second, ..] = *bytes else { return Ok(None) };
    if first & 0x70 != 0 {
        return Err(Violation::Protocol("reserved bits set without an extension"));
    }
    let fin = first & 0x80 != 0;
    let opcode = first & 0x0F;
    let is_control = opcode & 0x08 != 0;
    match opcode {
        OP_CONTINUATION | OP_TEXT | OP_CLOSE | OP_PING | OP_PONG => {}
        OP_BINARY => return Err(Violation::Binary),
        _ => return Err(Violation::Protocol("unknown opcode")),
    }
    if second & 0x80 == 0 {
        return Err(Violation::Protocol("client frames must be masked"));
    }
    let (declared, length_bytes) = match second & 0x7F {
        126 => match bytes.get(2..4) {
            Some(raw) => (u64::from(u16::from_be_bytes([raw[0], raw[1]])), 2),
            None => return Ok(None),
        },
        127 => match bytes.get(2..10) {
            Some(raw) => {
                let mut be = [0; 8];
                be.copy_from_slice(raw);
                (u64::from_be_bytes(be), 8)
            }
            None => return Ok(None),
        },
        short => (u64::from(short), 0),
    };
    if is_control {
        if !fin {
            return Err(Violation::Protocol("fragmented control frame"));
        }
        if declared > MAX_CONTROL_PAYLOAD as u64 {
            return Err(Violation::Protocol("control frame over 125 bytes"));
        }
    } else {
        match (opcode, message) {
            (OP_CONTINUATION, None) => return Err(Violation::Protocol("continuation without a message")),
            (OP_TEXT, Some(_)) => return Err(Violation::Protocol("new message inside a fragmented one")),
            _ => {}
        }
        // Judged by what the header declares, before a byte of the payload is read; a
        // continuation also costs its fragment's share.
        let used = message.map_or(0, |so_far| so_far + FRAGMENT_COST) as u64;
        if declared.saturating_add(used) > MAX_MESSAGE_BYTES as u64 {
            return Err(Violation::TooBig);
        }
    }
    let mask_at = 2 + length_bytes;
    let Some(mask) = bytes.get(mask_at..mask_at + 4) else { return Ok(None) };
    // Below MAX_MESSAGE_BYTES by the checks above, so it fits.
    let payload_len = usize::try_from(declared).unwrap_or(usize::MAX);
    Ok(Some(Header { fin, opcode, header_len: mask_at + 4, payload_len, mask: [mask[0], mask[1], mask[2], mask[3]] }))
}

/// Turns the bytes a client sends into messages, holding at most one incomplete frame and
/// one fragmented message (each within `MAX_MESSAGE_BYTES`). Idle, it holds nothing.
#[derive(Debug, Default)]
pub struct MessageReader {
    /// Received bytes not yet decoded: the start of the next frame.
    pending: Vec<u8>,
    /// A text message arriving in fragments.
    fragments: Vec<u8>,
    /// Fragments of it so far (each costs `FRAGMENT_COST` of the message's budget).
    fragment_count: usize,
    in_message: bool,
}

impl MessageReader {
    /// How many more bytes may be read: what completes one frame of the largest size. The
    /// reader decodes every complete frame before more is read, so there is always room.
    pub fn room(&self) -> usize {
        MAX_PENDING_BYTES.saturating_sub(self.pending.len()).max(1)
    }

    /// Takes bytes read from the client (at most `room()` of them).
    pub fn push(&mut self, bytes: &[u8]) {
        self.pending.extend_from_slice(bytes);
    }

    /// Bytes held for messages still arriving.
    pub fn buffered(&self) -> usize {
        self.pending.capacity() + self.fragments.capacity()
    }

    /// The next complete message, `Ok(None)` until more bytes arrive.
    pub fn next_message(&mut self) -> Result<Option<Incoming>, Violation> {
        loop {
            let message = self.in_message.then_some(self.fragments.len() + self.fragment_count * FRAGMENT_COST);
            let Some(header) = parse_header(&self.pending, message)? else {
                self.release_if_empty();
                return Ok(None);
            };
            let end = header.header_len + header.payload_len;
            if self.pending.len() < end {
                return Ok(None);
            }
            let mut payload: Vec<u8> = self.pending[header.header_len..end].to_vec();
            for (index, byte) in payload.iter_mut().enumerate() {
                *byte ^= header.mask[index % 4];
            }
            self.pending.drain(..end);
            self.release_if_empty();
            // A client that sent several frames at once (early, say) may have grown the
            // buffer past one frame: give the excess back.
            if self.pending.capacity() > MAX_PENDING_BYTES {
                self.pending.shrink_to(MAX_PENDING_BYTES);
            }
            match header.opcode {
                OP_PING => return Ok(Some(Incoming::Ping(Bytes::from(payload)))),
                OP_PONG => return Ok(Some(Incoming::Pong)),
                OP_CLOSE => return close_payload(&payload).map(|code| Some(Incoming::Close(code))),
                _ => {}
            }
            let whole = if header.fin && !self.in_message {
                payload
            } else {
                self.fragments.extend_from_slice(&payload);
                self.fragment_count += 1;
                self.in_message = !header.fin;
                if self.in_message {
                    continue;
                }
                self.fragment_count = 0;
                std::mem::take(&mut self.fragments)
            };
            return String::from_utf8(whole).map(|text| Some(Incoming::Text(text))).map_err(|_| Violation::InvalidUtf8);
        }
    }

    fn release_if_empty(&mut self) {
        if self.pending.is_empty() && self.pending.capacity() > 0 {
            self.pending = Vec::new();
        }
    }
}

/// A Close frame's body: nothing, or a valid code and a UTF-8 reason (RFC 6455 §5.5.1, §7.4).
fn close_payload(payload: &[u8]) -> Result<Option<u16>, Violation> {
    match payload {
        [] => Ok(None),
        [_] => Err(Violation::Protocol("close frame with a one-byte body")),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            let sendable = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !sendable {
                return Err(Violation::Protocol("invalid close code"));
            }
            std::str::from_utf8(reason).map_err(|_| Violation::InvalidUtf8)?;
            Ok(Some(code))
        }
    }
}

fn encode(opcode: u8, payload: &[u8]) -> Bytes {
    let mut frame = BytesMut::with_capacity(payload.len() + 10);
    frame.put_u8(0x80 | opcode);
    match payload.len() {
        short @ 0..=125 => frame.put_u8(short as u8),
        medium @ 126..=0xFFFF => {
            frame.put_u8(126);
            frame.put_u16(medium as u16);
        }
        long => {
            frame.put_u8(127);
            frame.put_u64(long as u64);
        }
    }
    frame.put_slice(payload);
    frame.freeze()
}

/// A whole text frame, as the server sends it (unmasked).
pub fn text(payload: &str) -> Bytes {
    encode(OP_TEXT, payload.as_bytes())
}

/// An empty ping (static: every connection sends one per interval).
pub fn ping() -> Bytes {
    Bytes::from_static(&[0x80 | OP_PING, 0])
}

pub fn pong(payload: &[u8]) -> Bytes {
    encode(OP_PONG, &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)])
}

/// A Close frame with `code` and a reason cut to what a control frame holds.
pub fn close(code: u16, reason: &str) -> Bytes {
    let mut body = Vec::with_capacity(2 + reason.len());
    body.extend_from_slice(&code.to_be_bytes());
    let mut cut = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    body.extend_from_slice(&reason.as_bytes()[..cut]);
    encode(OP_CLOSE, &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A client frame as a browser would send it: masked with `mask`.
    fn client_frame(first: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut frame = vec![first];
        match payload.len() {
            short @ 0..=125 => frame.push(0x80 | short as u8),
            medium @ 126..=0xFFFF => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(medium as u16).to_be_bytes());
            }
            long => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(long as u64).to_be_bytes());
            }
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(index, byte)| byte ^ mask[index % 4]));
        frame
    }

    fn feed(reader: &mut MessageReader, bytes: &[u8]) -> Result<Vec<Incoming>, Violation> {
        let mut messages = Vec::new();
        for chunk in bytes.chunks(7) {
            reader.push(chunk);
            while let Some(message) = reader.next_message()? {
                messages.push(message);
            }
        }
        Ok(messages)
    }

    #[test]
    fn text_pings_and_close_are_decoded_in_order() {
        let mut bytes = client_frame(0x81, b"{\"op\":\"subscribe\"}", [1, 2, 3, 4]);
        bytes.extend(client_frame(0x89, b"hi", [9, 9, 9, 9]));
        bytes.extend(client_frame(0x88, &[0x03, 0xE8, b'b', b'y', b'e'], [0, 1, 0, 1]));
        let messages = feed(&mut MessageReader::default(), &bytes).unwrap();
        assert_eq!(
            messages,
            [
                Incoming::Text("{\"op\":\"subscribe\"}".into()),
                Incoming::Ping(Bytes::from_static(b"hi")),
                Incoming::Close(Some(1000))
            ]
        );
    }

    #[test]
    fn a_declared_length_over_the_limit_is_refused_from_the_header_alone() {
        // The header of a 2^62-byte frame, and not one byte of its payload.
        let mut header = vec![0x81, 0x80 | 127];
        header.extend_from_slice(&(1u64 << 62).to_be_bytes());
        let mut reader = MessageReader::default();
        reader.push(&header);
        assert_eq!(reader.next_message(), Err(Violation::TooBig));

        let just_over = client_frame(0x81, &[b'x'; MAX_MESSAGE_BYTES + 1], [1, 1, 1, 1]);
        let mut reader = MessageReader::default();
        reader.push(&just_over[..8]);
        assert_eq!(reader.next_message(), Err(Violation::TooBig));

        let at_limit = client_frame(0x81, &[b'x'; MAX_MESSAGE_BYTES], [1, 1, 1, 1]);
        assert_eq!(feed(&mut MessageReader::default(), &at_limit).unwrap().len(), 1);
    }

    #[test]
    fn fragments_are_bounded_in_total() {
        let half = vec![b'x'; MAX_MESSAGE_BYTES / 2];
        let mut bytes = client_frame(0x01, &half, [1, 2, 3, 4]);
        bytes.extend(client_frame(0x00, &half, [1, 2, 3, 4]));
        bytes.extend(client_frame(0x80, b"y", [1, 2, 3, 4]));
        assert_eq!(feed(&mut MessageReader::default(), &bytes), Err(Violation::TooBig));

        let mut bytes = client_frame(0x01, b"{\"op\":", [1, 2, 3, 4]);
        bytes.extend(client_frame(0x89, b"", [5, 5, 5, 5])); // a ping between fragments
        bytes.extend(client_frame(0x80, b"1}", [1, 2, 3, 4]));
        assert_eq!(
            feed(&mut MessageReader::default(), &bytes).unwrap(),
            [Incoming::Ping(Bytes::new()), Incoming::Text("{\"op\":1}".into())]
        );
    }

    #[test]
    fn a_stream_of_empty_fragments_ends_like_an_oversized_message() {
        let mut bytes = client_frame(0x01, b"", [1, 2, 3, 4]);
        for _ in 0..MAX_MESSAGE_BYTES / FRAGMENT_COST {
            bytes.extend(client_frame(0x00, b"", [1, 2, 3, 4]));
        }
        assert_eq!(feed(&mut MessageReader::default(), &bytes), Err(Violation::TooBig));
    }

    #[test]
    fn a_buffer_grown_by_early_data_shrinks_back_to_one_frame() {
        let mut reader = MessageReader::default();
        let mut early = Vec::new();
        for _ in 0..1000 {
            early.extend(client_frame(0x89, b"", [1, 2, 3, 4]));
        }
        early.extend(&client_frame(0x81, b"{}", [1, 2, 3, 4])[..3]);
        reader.push(&early);
        while let Some(message) = reader.next_message().unwrap() {
            assert_eq!(message, Incoming::Ping(Bytes::new()));
        }
        assert!(reader.buffered() <= MAX_PENDING_BYTES, "{} bytes held", reader.buffered());
    }

    #[test]
    fn protocol_errors_get_their_own_close_codes() {
        let cases: [(Vec<u8>, u16); 9] = [
            (client_frame(0x81, &[0xC3, 0x28], [1, 2, 3, 4]), close_code::INVALID_PAYLOAD),
            (client_frame(0xC1, b"{}", [1, 2, 3, 4]), close_code::PROTOCOL_ERROR), // RSV1
            (client_frame(0x83, b"", [1, 2, 3, 4]), close_code::PROTOCOL_ERROR),   // reserved opcode
            (client_frame(0x82, b"\x01", [1, 2, 3, 4]), close_code::UNSUPPORTED_DATA),
            (vec![0x81, 0x02, b'{', b'}'], close_code::PROTOCOL_ERROR), // unmasked
            (client_frame(0x80, b"x", [1, 2, 3, 4]), close_code::PROTOCOL_ERROR), // stray continuation
            (client_frame(0x09, b"", [1, 2, 3, 4]), close_code::PROTOCOL_ERROR), // fragmented ping
            (client_frame(0x88, &[0x03, 0xED], [1, 2, 3, 4]), close_code::PROTOCOL_ERROR), // 1005 on the wire
            (client_frame(0x89, &[0; 126], [1, 2, 3, 4]), close_code::PROTOCOL_ERROR),
        ];
        for (bytes, code) in cases {
            let refused = feed(&mut MessageReader::default(), &bytes).expect_err("refused");
            assert_eq!(refused.close_code(), code, "{bytes:x?}: {refused:?}");
        }
    }

    #[test]
    fn an_idle_reader_holds_no_memory() {
        let mut reader = MessageReader::default();
        assert_eq!(reader.buffered(), 0);
        feed(&mut reader, &client_frame(0x81, b"{}", [1, 2, 3, 4])).unwrap();
        assert_eq!(reader.buffered(), 0);
    }

    #[test]
    fn server_frames_have_the_shortest_length_encoding() {
        assert_eq!(&text("hi")[..], b"\x81\x02hi");
        assert_eq!(ping(), encode(OP_PING, b""));
        let medium = text(&"x".repeat(300));
        assert_eq!(&medium[..4], &[0x81, 126, 0x01, 0x2C]);
        let long = text(&"x".repeat(70_000));
        assert_eq!(&long[..2], &[0x81, 127]);
        assert_eq!(long.len(), 70_000 + 10);
        assert_eq!(&close(1008, "slow consumer")[..4], &[0x88, 15, 0x03, 0xF0]);
        assert!(close(1000, &"é".repeat(100)).len() <= 2 + 125, "a reason is cut to a control frame");
    }

    proptest! {
        #[test]
        fn any_split_of_the_bytes_gives_the_same_messages(
            texts in proptest::collection::vec("[a-z{}\":é]{0,300}", 1..6),
            cut in 1usize..64,
        ) {
            let mut bytes = Vec::new();
            for text in &texts {
                bytes.extend(client_frame(0x81, text.as_bytes(), [7, 1, 200, 3]));
            }
            let mut reader = MessageReader::default();
            let mut messages = Vec::new();
            for chunk in bytes.chunks(cut) {
                reader.push(chunk);
                while let Some(message) = reader.next_message().unwrap() {
                    messages.push(message);
                }
            }
            let expected: Vec<Incoming> = texts.into_iter().map(Incoming::Text).collect();
            prop_assert_eq!(messages, expected);
            prop_assert_eq!(reader.buffered(), 0);
        }

        #[test]
        fn no_header_makes_the_reader_hold_more_than_one_frame(header in proptest::collection::vec(any::<u8>(), 0..14)) {
            let mut reader = MessageReader::default();
            reader.push(&header);
            let _ = reader.next_message();
            prop_assert!(reader.buffered() <= MAX_PENDING_BYTES);
        }
    }
}
