//! Writes the seed inputs of every fuzz target into `DIR/TARGET/`, for cargo-fuzz's
//! corpus (`cargo xtask fuzz` runs it).

mod corpus;

fn main() {
    let dir = std::env::args_os()
        .nth(1)
        .map(std::path::PathBuf::from)
        .expect("usage: seeds DIR");
    for (target, seeds) in corpus::all() {
        let target_dir = dir.join(target);
        std::fs::create_dir_all(&target_dir).unwrap();
        for (i, seed) in seeds.iter().enumerate() {
            std::fs::write(target_dir.join(format!("seed-{i}")), seed).unwrap();
        }
        println!("{}: {} seeds", target_dir.display(), seeds.len());
    }
}
