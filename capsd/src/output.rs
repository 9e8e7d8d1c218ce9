//! Output forms shared by the subcommands that print a document.

use capsd_core::{json, xml, DomainCapabilities};

/// `--format xml|json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    #[default]
    Xml,
    Json,
}

impl Format {
    /// The form's name (as `--format` spells it).
    pub fn name(self) -> &'static str {
        match self {
            Format::Xml => "xml",
            Format::Json => "json",
        }
    }

    pub fn render(self, caps: &DomainCapabilities) -> String {
        match self {
            Format::Xml => xml::to_xml(caps),
            Format::Json => json::to_json(caps),
        }
    }
}
