//! `hangar completions SHELL`: the shell completion script for the whole command tree, generated
//! by clap_complete from the same definitions the parser uses, so it cannot fall behind.

use super::Cli;
use clap::{CommandFactory, ValueEnum};
use std::io::Write;

/// The shells `hangar completions` writes a script for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

impl From<CompletionShell> for clap_complete::Shell {
    fn from(shell: CompletionShell) -> Self {
        match shell {
            CompletionShell::Bash => clap_complete::Shell::Bash,
            CompletionShell::Zsh => clap_complete::Shell::Zsh,
            CompletionShell::Fish => clap_complete::Shell::Fish,
        }
    }
}

/// Writes the completion script for `shell` to `out`.
pub fn completions(shell: CompletionShell, out: &mut dyn Write) {
    clap_complete::generate(clap_complete::Shell::from(shell), &mut Cli::command(), "hangar", out);
}
