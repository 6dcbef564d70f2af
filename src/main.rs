fn main() {
    println!("jellydemon {}", env!("CARGO_PKG_VERSION"));
}
