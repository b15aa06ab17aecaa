// Run: cargo run --release --example fast_upstream -- 127.0.0.1:18000
//
// A minimal, fast HTTP/1.1 upstream for load tests (benches/load.sh): every request is
// answered `200 OK` with a fixed 2-byte body, keep-alive, on tokio. It reads request
// heads only (load requests carry no body).
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:18000".into());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("fast_upstream listening on {addr}");
    loop {
        let (mut sock, _) = listener.accept().await?;
        sock.set_nodelay(true)?;
        tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut filled = 0;
            loop {
                let n = match sock.read(&mut buf[filled..]).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                filled += n;
                // Answer every complete head in the buffer (handles pipelining too).
                while let Some(end) = buf[..filled].windows(4).position(|w| w == b"\r\n\r\n") {
                    if sock.write_all(RESPONSE).await.is_err() {
                        return;
                    }
                    buf.copy_within(end + 4..filled, 0);
                    filled -= end + 4;
                }
                if filled == buf.len() {
                    return; // a head larger than 8 KiB: not a load request
                }
            }
        });
    }
}
