//! The operator's toolbox: `schema`, `completions` and `man`, all generated from the code
//! (the raw config types, the clap definitions), so none of them can fall behind it.
use std::io::Write;
use std::path::Path;

/// Writes the completion script for `shell` of the command tree `cmd` to `out`.
pub fn completions(shell: clap_complete::Shell, cmd: &mut clap::Command, out: &mut dyn Write) {
    let name = cmd.get_name().to_string();
    clap_complete::generate(shell, cmd, name, out);
}

/// Writes the man page of `cmd` (roff) to `out`; with `out_dir`, writes instead one page
/// per command into that directory (`portcullis.1`, `portcullis-serve.1`, …) and names them
/// on `out`.
pub fn man(cmd: clap::Command, out_dir: Option<&Path>, out: &mut dyn Write) -> std::io::Result<()> {
    let Some(dir) = out_dir else {
        return clap_mangen::Man::new(cmd).render(out);
    };
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(cmd, dir)?;
    let mut pages: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .collect();
    pages.sort();
    for p in pages {
        writeln!(out, "{}", p.display())?;
    }
    Ok(())
}
