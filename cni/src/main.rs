//! `weft-net`: the CNI plugin binary. Reads the `CNI_*` environment and the network
//! configuration on stdin, runs the command ([`weft_cni::run`]), prints the result or the CNI
//! error JSON on stdout and exits 0 or 1. Logs go to stderr (warnings and errors, or as
//! `RUST_LOG` says) and, when `WEFT_CNI_LOG` names a file, everything at debug level there too.

#![forbid(unsafe_code)]

use std::io::{IsTerminal as _, Read as _, Write as _};

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

fn init_logging() {
    let stderr_filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .with_filter(stderr_filter);
    let file = std::env::var_os("WEFT_CNI_LOG")
        .filter(|p| !p.is_empty())
        .and_then(|path| {
            match std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
            {
                Ok(f) => Some(f),
                Err(e) => {
                    eprintln!(
                        "weft-net: cannot open WEFT_CNI_LOG {}: {e}",
                        std::path::Path::new(&path).display()
                    );
                    None
                }
            }
        })
        .map(|f| {
            tracing_subscriber::fmt::layer()
                .with_writer(std::sync::Mutex::new(f))
                .with_ansi(false)
                .with_filter(EnvFilter::new("debug"))
        });
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .try_init();
}

fn main() {
    init_logging();
    let get = |k: &str| std::env::var(k).ok();
    let mut stdin = Vec::new();
    // VERSION may be run by hand, with a terminal on stdin: do not wait for it.
    let skip_stdin =
        get("CNI_COMMAND").as_deref() == Some("VERSION") && std::io::stdin().is_terminal();
    let outcome = match skip_stdin {
        true => weft_cni::run(get, &stdin, &weft_cni::NetlinkPlumbing),
        false => match std::io::stdin()
            .lock()
            .take(weft_cni::spec::MAX_STDIN as u64 + 1)
            .read_to_end(&mut stdin)
        {
            Ok(n) if n > weft_cni::spec::MAX_STDIN => {
                let err = weft_cni::CniError::new(
                    weft_cni::spec::code::IO_FAILURE,
                    "the network configuration on stdin is too large",
                )
                .with_details(format!(
                    "more than {} bytes; a network configuration is a few kilobytes",
                    weft_cni::spec::MAX_STDIN
                ));
                tracing::error!("{err}");
                weft_cni::Outcome {
                    stdout: err.to_json(weft_cni::spec::LATEST),
                    exit_code: 1,
                }
            }
            Ok(_) => weft_cni::run(get, &stdin, &weft_cni::NetlinkPlumbing),
            Err(e) => {
                let err = weft_cni::CniError::new(
                    weft_cni::spec::code::IO_FAILURE,
                    "failed to read the network configuration from stdin",
                )
                .with_details(e.to_string());
                tracing::error!("{err}");
                weft_cni::Outcome {
                    stdout: err.to_json(weft_cni::spec::LATEST),
                    exit_code: 1,
                }
            }
        },
    };
    let mut out = std::io::stdout().lock();
    if !outcome.stdout.is_empty() {
        let _ = out.write_all(outcome.stdout.as_bytes());
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
    std::process::exit(outcome.exit_code);
}
