//! `mock-upstream [--listen ADDR] [--no-record]`: the test and benchmark upstream, serving
//! OpenAI's `/v1` and Ollama's `/api` at once. See `mock.rs` for what each model name
//! does. `--no-record` keeps no copy of each request (for load runs).

mod mock;

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut listen = "127.0.0.1:0".to_owned();
    let mut recording = true;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next().unwrap_or(listen),
            "--no-record" => recording = false,
            _ => {
                eprintln!("usage: mock-upstream [--listen HOST:PORT] [--no-record]");
                std::process::exit(2);
            }
        }
    }
    actix_web::rt::System::new().block_on(async move {
        let (server, address, _state) = mock::start(&listen, recording)?;
        println!("mock upstream listening on http://{address}");
        server.await
    })
}
