//! An incremental parser for the `text/event-stream` format, following the WHATWG HTML
//! standard ("Server-sent events", section 9.2.6 "Interpreting an event stream").
//!
//! Bytes go in as they arrive, in chunks cut anywhere; events come out once their closing
//! blank line has arrived. What the standard asks for, and this does:
//!
//! - lines end with CR LF, a lone LF or a lone CR (a CR at the end of one chunk and an LF at
//!   the start of the next are one line end);
//! - one leading UTF-8 byte order mark per stream (per connection) is dropped, even when it
//!   is split across chunks;
//! - the text is UTF-8, invalid sequences become U+FFFD (line ends are ASCII and cannot sit
//!   inside a multi-byte sequence, so decoding line by line is the same as decoding the stream);
//! - a line starting with `:` is a comment (keep-alives), ignored;
//! - `name: value` is a field, with at most one space after the colon dropped; a line without
//!   a colon is a field with that name and an empty value;
//! - `data` appends its value and a LF to the data buffer; `event` sets the event type; `id`
//!   sets the last event ID buffer unless the value contains NUL; `retry` (ASCII digits only)
//!   sets the reconnection time in milliseconds; any other field is ignored;
//! - a blank line dispatches: the last event ID becomes the ID buffer (it persists across
//!   events until the server changes it), and if the data buffer is empty nothing is
//!   dispatched; otherwise its final LF is removed and the event goes out with type `message`
//!   unless `event` said otherwise;
//! - an event still incomplete when the connection ends is discarded, together with an `id`
//!   it set (so a reconnection resumes after the last event actually received).
//!
//! Two additions protect the process: a line or an event's data longer than the parser's
//! limit is discarded (reported as [`Parsed::Oversized`]) instead of buffered without bound,
//! and an `id` longer than [`MAX_ID_BYTES`] is ignored like one containing NUL (reported as
//! [`Parsed::LongId`]), since it would be sent back as a `Last-Event-ID` header on every
//! reconnection, which servers refuse.

use std::time::Duration;

/// The longest `id` kept as the last event ID: HTTP servers refuse large request headers
/// (431), so a longer one would make every reconnection fail.
pub(crate) const MAX_ID_BYTES: usize = 1024;

/// What [`Parser::feed`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// A complete event.
    Event(RawEvent),
    /// An event whose data (or one of whose lines) exceeded the limit; skipped. `id` is the
    /// last event ID after it.
    Oversized { id: String, limit: usize },
    /// An `id` field of `bytes` bytes, over [`MAX_ID_BYTES`]: ignored, the last event ID is
    /// unchanged.
    LongId { bytes: usize },
}

/// An event as parsed: data not decoded, `id` empty when the stream has none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RawEvent {
    pub id: String,
    pub event: String,
    pub data: String,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// The parser state of one listener; it lives across reconnections, which keep the last
/// event ID and the reconnection time (see [`Parser::reset_connection`]).
#[derive(Debug)]
pub(crate) struct Parser {
    limit: usize,
    /// Bytes of the line being read.
    line: Vec<u8>,
    /// The line being read is over the limit: its remaining bytes are dropped.
    line_dropped: bool,
    /// The previous byte was a CR, so an LF right after it ends nothing.
    after_cr: bool,
    /// The first bytes of the stream while they may still be a byte order mark; `None` once
    /// the start of the stream is past.
    head: Option<Vec<u8>>,
    data: String,
    event_type: String,
    /// Set by `id:` fields; becomes `last_event_id` when an event is dispatched.
    id_buffer: String,
    last_event_id: String,
    /// The current event exceeded the limit: it is dropped at its blank line.
    oversized: bool,
    retry: Option<Duration>,
}

impl Parser {
    /// A parser that drops lines and events larger than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Parser {
            limit: limit.max(1),
            line: Vec::new(),
            line_dropped: false,
            after_cr: false,
            head: Some(Vec::new()),
            data: String::new(),
            event_type: String::new(),
            id_buffer: String::new(),
            last_event_id: String::new(),
            oversized: false,
            retry: None,
        }
    }

    /// Starts a new stream (a new connection): whatever was incomplete is dropped, a byte
    /// order mark is expected again; the last event ID and the reconnection time are kept.
    pub fn reset_connection(&mut self) {
        self.line.clear();
        self.line_dropped = false;
        self.after_cr = false;
        self.head = Some(Vec::new());
        self.data.clear();
        self.event_type.clear();
        self.id_buffer.clone_from(&self.last_event_id);
        self.oversized = false;
    }

    /// The ID of the last event dispatched (or the ID a blank line committed), to send as
    /// `Last-Event-ID` when reconnecting; empty when there is none.
    pub fn last_event_id(&self) -> &str {
        &self.last_event_id
    }

    /// Forgets the last event ID (a server refused it): the next connection sends none.
    pub fn forget_last_event_id(&mut self) {
        self.last_event_id.clear();
        self.id_buffer.clear();
    }

    /// The reconnection time the server last set with `retry:`.
    pub fn retry(&self) -> Option<Duration> {
        self.retry
    }

    /// Parses a chunk, appending what it completed to `out`.
    pub fn feed(&mut self, bytes: &[u8], out: &mut Vec<Parsed>) {
        let held;
        let mut bytes = bytes;
        if let Some(head) = &mut self.head {
            // Hold the first bytes back until it is clear whether they are a BOM.
            head.extend_from_slice(bytes);
            if head.len() < BOM.len() && BOM.starts_with(head) {
                return;
            }
            held = self.head.take().unwrap_or_default();
            bytes = held.strip_prefix(BOM).unwrap_or(&held);
        }
        while !bytes.is_empty() {
            let taken = self.feed_some(bytes, out);
            bytes = &bytes[taken..];
        }
    }

    /// Consumes bytes up to and including the next line end; returns how many.
    fn feed_some(&mut self, bytes: &[u8], out: &mut Vec<Parsed>) -> usize {
        if self.after_cr {
            self.after_cr = false;
            if bytes[0] == b'\n' {
                return 1;
            }
        }
        match bytes.iter().position(|&b| b == b'\n' || b == b'\r') {
            Some(end) => {
                self.push_line_bytes(&bytes[..end]);
                self.after_cr = bytes[end] == b'\r';
                self.end_line(out);
                end + 1
            }
            None => {
                self.push_line_bytes(bytes);
                bytes.len()
            }
        }
    }

    fn push_line_bytes(&mut self, bytes: &[u8]) {
        if self.line_dropped {
            return;
        }
        if self.line.len() + bytes.len() > self.limit {
            // A long comment costs nothing; any other long line costs its event.
            let first = self.line.first().or(bytes.first());
            if first != Some(&b':') {
                self.oversized = true;
            }
            self.line.clear();
            self.line_dropped = true;
        } else {
            self.line.extend_from_slice(bytes);
        }
    }

    fn end_line(&mut self, out: &mut Vec<Parsed>) {
        if std::mem::take(&mut self.line_dropped) {
            // The line was too long to keep; its event is already marked oversized.
            return;
        }
        let bytes = std::mem::take(&mut self.line);
        if bytes.is_empty() {
            self.dispatch(out);
            return;
        }
        let line = String::from_utf8_lossy(&bytes);
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((field, value)) => (field, value.strip_prefix(' ').unwrap_or(value)),
            None => (line.as_ref(), ""),
        };
        match field {
            "event" => value.clone_into(&mut self.event_type),
            "data" => {
                if self.oversized {
                    return;
                }
                if self.data.len() + value.len() + 1 > self.limit {
                    self.data.clear();
                    self.oversized = true;
                } else {
                    self.data.push_str(value);
                    self.data.push('\n');
                }
            }
            "id" if value.len() > MAX_ID_BYTES => out.push(Parsed::LongId { bytes: value.len() }),
            "id" if !value.contains('\0') => value.clone_into(&mut self.id_buffer),
            "retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                // All digits but too large for u64: the longest wait there is.
                let ms = value.parse::<u64>().unwrap_or(u64::MAX);
                self.retry = Some(Duration::from_millis(ms));
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, out: &mut Vec<Parsed>) {
        self.last_event_id.clone_from(&self.id_buffer);
        let event_type = std::mem::take(&mut self.event_type);
        if std::mem::take(&mut self.oversized) {
            self.data.clear();
            out.push(Parsed::Oversized {
                id: self.last_event_id.clone(),
                limit: self.limit,
            });
            return;
        }
        if self.data.is_empty() {
            return;
        }
        let mut data = std::mem::take(&mut self.data);
        if data.ends_with('\n') {
            data.pop();
        }
        out.push(Parsed::Event(RawEvent {
            id: self.last_event_id.clone(),
            event: if event_type.is_empty() {
                "message".to_owned()
            } else {
                event_type
            },
            data,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, event: &str, data: &str) -> Parsed {
        Parsed::Event(RawEvent {
            id: id.into(),
            event: event.into(),
            data: data.into(),
        })
    }

    fn msg(data: &str) -> Parsed {
        event("", "message", data)
    }

    /// Parses `chunks` in one stream.
    fn parse_chunks(chunks: &[&[u8]]) -> (Vec<Parsed>, Parser) {
        let mut parser = Parser::new(1 << 20);
        let mut out = Vec::new();
        for chunk in chunks {
            parser.feed(chunk, &mut out);
        }
        (out, parser)
    }

    fn parse(text: &str) -> Vec<Parsed> {
        parse_chunks(&[text.as_bytes()]).0
    }

    /// Parses `text` cut at every possible place (into 2 and into 1-byte chunks) and checks
    /// the result never depends on the cut.
    fn parse_every_split(text: &[u8]) -> Vec<Parsed> {
        let (whole, _) = parse_chunks(&[text]);
        for cut in 0..=text.len() {
            let (split, _) = parse_chunks(&[&text[..cut], &text[cut..]]);
            assert_eq!(split, whole, "cut at byte {cut} of {text:?}");
        }
        let bytes: Vec<&[u8]> = text.chunks(1).collect();
        assert_eq!(parse_chunks(&bytes).0, whole, "one byte at a time");
        whole
    }

    #[test]
    fn single_and_multi_line_data() {
        assert_eq!(parse("data: hello\n\n"), [msg("hello")]);
        assert_eq!(
            parse("data: first\ndata: second\ndata\ndata: third\n\n"),
            [msg("first\nsecond\n\nthird")]
        );
        assert_eq!(
            parse("data: a\n\ndata: b\n\n"),
            [msg("a"), msg("b")],
            "two events"
        );
    }

    #[test]
    fn spec_example_blocks() {
        // From the standard: "The first block fires events with the data set to the empty
        // string, as would the last block if it was followed by a blank line. The middle block
        // fires an event with the data set to a single newline character. The last block is
        // discarded because it is not followed by a blank line."
        assert_eq!(parse("data\n\ndata\ndata\n\ndata:"), [msg(""), msg("\n")]);
        // "The following stream fires two identical events": one space after the colon is
        // dropped, only one.
        assert_eq!(
            parse("data:test\n\ndata: test\n\n"),
            [msg("test"), msg("test")]
        );
        assert_eq!(parse("data:  two spaces\n\n"), [msg(" two spaces")]);
        // The stock-ticker example: lines after the first without a space, YHOO etc.
        assert_eq!(
            parse("data: YHOO\ndata: +2\ndata: 10\n\n"),
            [msg("YHOO\n+2\n10")]
        );
    }

    #[test]
    fn comments_and_keep_alives_are_ignored() {
        assert_eq!(
            parse(": this is a comment\n:\n:keep-alive\n\ndata: x\n: inside\n\n:ping\n\n"),
            [msg("x")]
        );
    }

    #[test]
    fn line_ends_cr_lf_crlf_and_mixed() {
        assert_eq!(parse("data: a\r\n\r\n"), [msg("a")]);
        assert_eq!(parse("data: a\r\r"), [msg("a")]);
        assert_eq!(
            parse("data: a\rdata: b\ndata: c\r\ndata: d\r\n\ndata: e\n\r"),
            [msg("a\nb\nc\nd"), msg("e")]
        );
        // CR CR is two line ends (a blank line), CR LF is one.
        assert_eq!(parse("data: a\r\r\ndata: b\r\n\r\n"), [msg("a"), msg("b")]);
    }

    #[test]
    fn chunk_boundaries_never_matter() {
        let stream = b"\xEF\xBB\xBFretry: 1500\r\nid: 7\r\nevent: price\r\ndata: {\"a\":\r\ndata: 1}\r\n\r\n: keep-alive\r\rdata: \xC3\xA9t\xC3\xA9\rid\r\r";
        let events = parse_every_split(stream);
        assert_eq!(
            events,
            [event("7", "price", "{\"a\":\n1}"), msg("été")],
            "an empty id field resets the last event id"
        );
        let (_, parser) = parse_chunks(&[stream]);
        assert_eq!(parser.retry(), Some(Duration::from_millis(1500)));
        assert_eq!(parser.last_event_id(), "");
    }

    #[test]
    fn event_type_defaults_to_message_and_resets() {
        assert_eq!(
            parse("event: add\ndata: 1\n\ndata: 2\n\nevent: remove\nevent: update\ndata: 3\n\n"),
            [event("", "add", "1"), msg("2"), event("", "update", "3")]
        );
        // An event with no data is not dispatched, and its type does not leak into the next.
        assert_eq!(parse("event: ping\n\ndata: x\n\n"), [msg("x")]);
    }

    #[test]
    fn ids_persist_until_changed_and_nul_is_ignored() {
        let (events, parser) = parse_chunks(&[
            b"id: 1\ndata: a\n\ndata: b\n\nid: 2\n\ndata: c\n\nid: bad\0id\ndata: d\n\nid\ndata: e\n\n",
        ]);
        assert_eq!(
            events,
            [
                event("1", "message", "a"),
                event("1", "message", "b"),
                // `id: 2` with no data still sets the last event id.
                event("2", "message", "c"),
                event("2", "message", "d"),
                msg("e"),
            ]
        );
        assert_eq!(parser.last_event_id(), "");
        let (_, parser) = parse_chunks(&[b"id: 41\ndata: a\n\nid: 42\n\n"]);
        assert_eq!(parser.last_event_id(), "42");
        // An id with a space after the colon keeps only what follows it; ids are not trimmed.
        assert_eq!(
            parse("id:  x \ndata: a\n\n"),
            [event(" x ", "message", "a")]
        );
    }

    #[test]
    fn ids_over_1_kib_are_ignored_and_reported() {
        let long = "x".repeat(MAX_ID_BYTES + 1);
        let fits = "y".repeat(MAX_ID_BYTES);
        let (events, mut parser) = parse_chunks(&[format!(
            "id: 1\ndata: a\n\nid: {long}\ndata: b\n\nid: {fits}\ndata: c\n\n"
        )
        .as_bytes()]);
        assert_eq!(
            events,
            [
                event("1", "message", "a"),
                Parsed::LongId {
                    bytes: MAX_ID_BYTES + 1
                },
                // Ignored like an id with NUL: the previous one stays.
                event("1", "message", "b"),
                event(&fits, "message", "c"),
            ]
        );
        assert_eq!(parser.last_event_id(), fits);
        parser.forget_last_event_id();
        assert_eq!(parser.last_event_id(), "");
        parser.reset_connection();
        let mut out = Vec::new();
        parser.feed(b"data: d\n\n", &mut out);
        assert_eq!(out, [msg("d")]);
    }

    #[test]
    fn retry_needs_ascii_digits() {
        let retry = |text: &str| parse_chunks(&[text.as_bytes()]).1.retry();
        assert_eq!(retry("retry: 3000\n"), Some(Duration::from_millis(3000)));
        assert_eq!(retry("retry:0\n"), Some(Duration::ZERO));
        assert_eq!(retry("retry: 3s\n"), None);
        assert_eq!(retry("retry: -1\n"), None);
        assert_eq!(retry("retry: 1.5\n"), None);
        assert_eq!(retry("retry:\n"), None);
        assert_eq!(retry("retry\n"), None);
        assert_eq!(
            retry("retry: 10\nretry: x\n"),
            Some(Duration::from_millis(10))
        );
        assert_eq!(
            retry("retry: 99999999999999999999999\n"),
            Some(Duration::from_millis(u64::MAX))
        );
        // retry takes effect without an event being dispatched.
        assert_eq!(parse("retry: 10\n\n"), []);
    }

    #[test]
    fn byte_order_mark_only_once_at_the_start() {
        assert_eq!(parse("\u{FEFF}data: a\n\n"), [msg("a")]);
        assert_eq!(
            parse("\u{FEFF}\u{FEFF}data: a\n\ndata: b\n\n"),
            [msg("b")],
            "a second BOM is part of the first line's field name"
        );
        assert_eq!(parse("data: \u{FEFF}a\n\n"), [msg("\u{FEFF}a")]);
        // A stream shorter than a BOM, or starting like one but not one.
        assert_eq!(parse_every_split(b"\xEF\xBB"), []);
        assert_eq!(parse_every_split(b"\xEFdata: a\n\n"), []);
        assert_eq!(parse_every_split(b"\n\ndata: a\n\n"), [msg("a")]);
    }

    #[test]
    fn fields_without_colon_and_unknown_fields() {
        // `data` alone appends an empty line; unknown fields are ignored; field names are
        // case-sensitive.
        assert_eq!(
            parse("data\ndata: x\nfoo: bar\nData: no\nDATA\n\n"),
            [msg("\nx")]
        );
        assert_eq!(parse("event\ndata: x\n\n"), [msg("x")]);
        // A colon inside the value is kept.
        assert_eq!(parse("data: a: b:c\n\n"), [msg("a: b:c")]);
    }

    #[test]
    fn invalid_utf8_becomes_replacement_characters() {
        assert_eq!(parse_chunks(&[b"data: a\xFFb\n\n"]).0, [msg("a\u{FFFD}b")]);
        // A multi-byte character split across chunks is not damaged.
        assert_eq!(
            parse_chunks(&[b"data: \xE2\x82", b"\xAC\n\n"]).0,
            [msg("€")]
        );
    }

    #[test]
    fn incomplete_event_is_dropped_on_reconnect_with_its_id() {
        let mut parser = Parser::new(1024);
        let mut out = Vec::new();
        parser.feed(b"id: 1\ndata: one\n\nid: 2\ndata: tw", &mut out);
        assert_eq!(out, [event("1", "message", "one")]);
        assert_eq!(parser.last_event_id(), "1");
        parser.reset_connection();
        out.clear();
        // The new connection starts with a BOM and the rest of the stream.
        parser.feed(b"\xEF\xBB\xBFdata: two\n\n", &mut out);
        assert_eq!(out, [event("1", "message", "two")]);
        // A CR at the very end of a connection does not swallow the next one's first LF.
        let mut parser = Parser::new(1024);
        parser.feed(b"data: a\r", &mut out);
        parser.reset_connection();
        out.clear();
        parser.feed(b"\ndata: b\n\n", &mut out);
        assert_eq!(out, [msg("b")]);
    }

    #[test]
    fn oversized_lines_and_events_are_skipped() {
        let mut parser = Parser::new(16);
        let mut out = Vec::new();
        parser.feed(b"id: 1\ndata: 0123456789\ndata: 0123456789\n\n", &mut out);
        parser.feed(b"data: ok\n\n", &mut out);
        parser.feed(b"id: 2\ndata: 0123456789abcdefghij", &mut out);
        parser.feed(b"klmnop\n\ndata: fine\n\n", &mut out);
        assert_eq!(
            out,
            [
                Parsed::Oversized {
                    id: "1".into(),
                    limit: 16
                },
                event("1", "message", "ok"),
                Parsed::Oversized {
                    id: "2".into(),
                    limit: 16
                },
                event("2", "message", "fine"),
            ]
        );
        // A long comment is dropped without costing its event, wherever the chunks cut it.
        for first in [&b":"[..], &[b':'; 40][..]] {
            let mut out = Vec::new();
            let mut parser = Parser::new(16);
            parser.feed(b"data: a\n", &mut out);
            parser.feed(first, &mut out);
            parser.feed(&[b'x'; 100], &mut out);
            parser.feed(b"\ndata: b\n\n", &mut out);
            assert_eq!(out, [msg("a\nb")]);
        }
    }
}
