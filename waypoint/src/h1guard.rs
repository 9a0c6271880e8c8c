//! Request-smuggling guard for HTTP/1.1 inside the tunnel. hyper resolves ambiguous framing
//! the lenient way RFC 9112 allows (Transfer-Encoding wins over Content-Length, identical
//! duplicate Content-Lengths are merged); a proxy must refuse both (a backend or another
//! proxy may read them differently). This tracker follows the message framing of the client's
//! byte stream, without I/O, and names the first framing it refuses.

/// Why a request was refused (answered 400, connection closed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Violation {
    ContentLengthAndTransferEncoding,
    DuplicateContentLength,
    BadContentLength,
    TransferEncodingNotChunked,
    BadChunkSize,
    BadChunkEnd,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Violation::ContentLengthAndTransferEncoding => {
                "both Content-Length and Transfer-Encoding"
            }
            Violation::DuplicateContentLength => "more than one Content-Length",
            Violation::BadContentLength => "Content-Length is not a number",
            Violation::TransferEncodingNotChunked => "Transfer-Encoding does not end in chunked",
            Violation::BadChunkSize => "bad chunk size",
            Violation::BadChunkEnd => "chunk data not followed by CRLF",
        })
    }
}

/// Longest chunk-size line (size, extensions, CRLF) accepted.
const MAX_CHUNK_LINE: usize = 1024;

#[derive(Debug)]
enum State {
    /// Collecting a request head (held back until complete and checked).
    Head(Vec<u8>),
    Body(u64),
    ChunkSize(Vec<u8>),
    ChunkData(u64),
    ChunkEnd(Vec<u8>),
    Trailer(Vec<u8>),
    /// A head over the size limit: handed to hyper as is (it answers 431 and closes).
    Passthrough,
    Refused,
}

#[derive(Debug)]
pub struct Tracker {
    state: State,
    max_head: usize,
}

/// What the caller may hand on after [`Tracker::feed`].
#[derive(Debug, PartialEq, Eq)]
pub struct Fed {
    /// Bytes (a prefix of the checked stream, possibly held back from earlier calls) that are
    /// safe to hand to the HTTP server.
    pub release: Vec<u8>,
    /// The framing was refused; `at_head` = before any byte of that request was released.
    pub refused: Option<(Violation, bool)>,
}

impl Tracker {
    pub fn new(max_head: usize) -> Tracker {
        Tracker {
            state: State::Head(Vec::new()),
            max_head,
        }
    }

    pub fn feed(&mut self, mut input: &[u8]) -> Fed {
        let mut release = Vec::with_capacity(input.len());
        while !input.is_empty() {
            match &mut self.state {
                State::Refused => break,
                State::Passthrough => {
                    release.extend_from_slice(input);
                    break;
                }
                State::Head(buf) => {
                    if buf.is_empty() {
                        // Empty lines before a request line are allowed (RFC 9112 2.2).
                        let skip = input
                            .iter()
                            .take_while(|b| matches!(b, b'\r' | b'\n'))
                            .count();
                        release.extend_from_slice(&input[..skip]);
                        input = &input[skip..];
                        if input.is_empty() {
                            break;
                        }
                    }
                    let before = buf.len();
                    buf.extend_from_slice(input);
                    let from = before.saturating_sub(3);
                    let Some(end) = find(&buf[from..], b"\r\n\r\n").map(|i| i + from) else {
                        if buf.len() > self.max_head {
                            release.extend_from_slice(buf);
                            self.state = State::Passthrough;
                        }
                        break;
                    };
                    let head_len = end + 4;
                    let used = head_len - before;
                    let head = buf[..head_len].to_vec();
                    match check_head(&head) {
                        Ok(next) => {
                            release.extend_from_slice(&head);
                            self.state = next;
                            input = &input[used..];
                        }
                        Err(v) => {
                            self.state = State::Refused;
                            return Fed {
                                release,
                                refused: Some((v, true)),
                            };
                        }
                    }
                }
                State::Body(n) => {
                    let take = (*n).min(input.len() as u64) as usize;
                    release.extend_from_slice(&input[..take]);
                    *n -= take as u64;
                    input = &input[take..];
                    if *n == 0 {
                        self.state = State::Head(Vec::new());
                    }
                }
                State::ChunkSize(line) => match take_line(line, &mut input, &mut release) {
                    None if line.len() > MAX_CHUNK_LINE => {
                        return self.refuse(release, Violation::BadChunkSize)
                    }
                    None => {}
                    Some(l) => match parse_chunk_size(&l) {
                        Some(0) => self.state = State::Trailer(Vec::new()),
                        Some(n) => self.state = State::ChunkData(n),
                        None => return self.refuse(release, Violation::BadChunkSize),
                    },
                },
                State::ChunkData(n) => {
                    let take = (*n).min(input.len() as u64) as usize;
                    release.extend_from_slice(&input[..take]);
                    *n -= take as u64;
                    input = &input[take..];
                    if *n == 0 {
                        self.state = State::ChunkEnd(Vec::new());
                    }
                }
                State::ChunkEnd(got) => {
                    while got.len() < 2 && !input.is_empty() {
                        got.push(input[0]);
                        input = &input[1..];
                    }
                    if got.len() == 2 {
                        if got.as_slice() != b"\r\n" {
                            return self.refuse(release, Violation::BadChunkEnd);
                        }
                        release.extend_from_slice(b"\r\n");
                        self.state = State::ChunkSize(Vec::new());
                    }
                }
                State::Trailer(line) => match take_line(line, &mut input, &mut release) {
                    None if line.len() > self.max_head => {
                        return self.refuse(release, Violation::BadChunkSize)
                    }
                    None => {}
                    Some(l) if l.is_empty() => self.state = State::Head(Vec::new()),
                    Some(_) => self.state = State::Trailer(Vec::new()),
                },
            }
        }
        Fed {
            release,
            refused: None,
        }
    }

    fn refuse(&mut self, release: Vec<u8>, v: Violation) -> Fed {
        self.state = State::Refused;
        Fed {
            release,
            refused: Some((v, false)),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Moves bytes into `line` up to a LF; when complete, releases the whole line and returns its
/// content without CRLF.
fn take_line(line: &mut Vec<u8>, input: &mut &[u8], release: &mut Vec<u8>) -> Option<Vec<u8>> {
    match input.iter().position(|&b| b == b'\n') {
        Some(i) => {
            line.extend_from_slice(&input[..=i]);
            *input = &input[i + 1..];
            release.extend_from_slice(line);
            let l = std::mem::take(line);
            let content = l.strip_suffix(b"\n").unwrap_or(&l);
            let content = content.strip_suffix(b"\r").unwrap_or(content);
            Some(content.to_vec())
        }
        None => {
            line.extend_from_slice(input);
            *input = &[];
            None
        }
    }
}

fn parse_chunk_size(line: &[u8]) -> Option<u64> {
    let size = line.split(|&b| b == b';').next()?;
    let size = std::str::from_utf8(size)
        .ok()?
        .trim_end_matches([' ', '\t']);
    if size.is_empty() || size.len() > 16 || !size.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u64::from_str_radix(size, 16).ok()
}

/// Checks one complete request head and returns the body state that follows it.
fn check_head(head: &[u8]) -> Result<State, Violation> {
    let text = String::from_utf8_lossy(head);
    let mut lengths = Vec::new();
    let mut codings: Vec<String> = Vec::new();
    for line in text.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim().to_ascii_lowercase();
        let value = value.trim();
        if name == "content-length" {
            lengths.push(value.to_owned());
        } else if name == "transfer-encoding" {
            codings.extend(value.split(',').map(|c| c.trim().to_ascii_lowercase()));
        }
    }
    if !lengths.is_empty() && !codings.is_empty() {
        return Err(Violation::ContentLengthAndTransferEncoding);
    }
    if lengths.len() > 1 || lengths.first().is_some_and(|l| l.contains(',')) {
        return Err(Violation::DuplicateContentLength);
    }
    if !codings.is_empty() {
        return if codings.last().map(String::as_str) == Some("chunked") {
            Ok(State::ChunkSize(Vec::new()))
        } else {
            Err(Violation::TransferEncodingNotChunked)
        };
    }
    match lengths.first() {
        None => Ok(State::Head(Vec::new())),
        Some(l) => {
            if l.is_empty() || l.len() > 19 || !l.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Violation::BadContentLength);
            }
            let n: u64 = l.parse().map_err(|_| Violation::BadContentLength)?;
            Ok(if n == 0 {
                State::Head(Vec::new())
            } else {
                State::Body(n)
            })
        }
    }
}

#[cfg(test)]
#[path = "h1guard_tests.rs"]
mod tests;
