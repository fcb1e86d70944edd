//! `crdgen`: prints the CustomResourceDefinitions generated from the operator's
//! types. `crdgen --write DIR` writes one file per CRD; a test checks that `crds/`
//! matches.

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => print!("{}", dduomq_operator::crdgen::all_yaml()),
        [flag, dir] if flag == "--write" => {
            for (file, yaml) in dduomq_operator::crdgen::files() {
                std::fs::write(std::path::Path::new(dir).join(file), yaml)?;
            }
        }
        _ => anyhow::bail!("usage: crdgen [--write DIR]"),
    }
    Ok(())
}
