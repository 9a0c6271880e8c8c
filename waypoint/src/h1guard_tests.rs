use super::*;

fn run(chunks: &[&[u8]]) -> (Vec<u8>, Option<(Violation, bool)>) {
    let mut t = Tracker::new(1024);
    let mut out = Vec::new();
    for c in chunks {
        let f = t.feed(c);
        out.extend_from_slice(&f.release);
        if f.refused.is_some() {
            return (out, f.refused);
        }
    }
    (out, None)
}

#[test]
fn good_framing_passes_through_unchanged_in_any_split() {
    let stream: &[u8] = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\
POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
\r\nPOST /c HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n\
GET /last HTTP/1.1\r\n\r\n";
    // Every split point, byte by byte and in two pieces.
    let (out, refused) = run(&stream.iter().map(std::slice::from_ref).collect::<Vec<_>>());
    assert_eq!((out.as_slice(), refused), (stream, None));
    for i in 0..stream.len() {
        let (out, refused) = run(&[&stream[..i], &stream[i..]]);
        assert_eq!((out.as_slice(), refused), (stream, None), "split at {i}");
    }
}

#[test]
fn smuggling_attempts_are_refused() {
    use Violation::*;
    let cases: &[(&[u8], Violation, bool)] = &[
        (b"POST / HTTP/1.1\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", ContentLengthAndTransferEncoding, true),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n", ContentLengthAndTransferEncoding, true),
        (b"POST / HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n", DuplicateContentLength, true),
        (b"POST / HTTP/1.1\r\nContent-Length: 4, 4\r\n\r\n", DuplicateContentLength, true),
        (b"POST / HTTP/1.1\r\nContent-Length: +4\r\n\r\n", BadContentLength, true),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", TransferEncodingNotChunked, true),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", BadChunkSize, false),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n-1\r\n", BadChunkSize, false),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\r\n", BadChunkSize, false),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n11111111111111111\r\n", BadChunkSize, false),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY", BadChunkEnd, false),
        // The second request of a keep-alive connection is checked too.
        (b"GET / HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", DuplicateContentLength, true),
    ];
    for (input, want, at_head) in cases {
        let (_, refused) = run(&[input]);
        assert_eq!(
            refused,
            Some((want.clone(), *at_head)),
            "{}",
            String::from_utf8_lossy(input)
        );
    }
    // Nothing of a refused head is released.
    let (out, _) = run(&[
        b"GET / HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
    ]);
    assert_eq!(out, b"GET / HTTP/1.1\r\n\r\n");
}

#[test]
fn an_oversized_head_is_left_to_the_server() {
    let mut t = Tracker::new(16);
    let f = t.feed(b"GET / HTTP/1.1\r\nX-Long: aaaaaaaaaaaaaaaa");
    assert_eq!(f.refused, None);
    assert_eq!(f.release.len(), 40);
    assert_eq!(t.feed(b"more").release, b"more");
}
