//! The `veltix` command-line tool (work in progress).

fn main() {
    eprintln!("veltix: not implemented yet");
    std::process::exit(2);
}
