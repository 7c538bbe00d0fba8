//! A test-only library that looks like an aihost plugin but declares interface version 2.0.0.
//!
//! Its root module has aihost's root module name (`aihost_plugin`), so the host finds and opens
//! it, and abi_stable's version check (major 2 against the host's 1) refuses it before the layout
//! is even compared. The layout here is a placeholder.

use abi_stable::{
    StableAbi, declare_root_module_statics, export_root_module, library::RootModule,
    prefix_type::PrefixTypeTrait, sabi_types::VersionStrings, std_types::RString,
};

/// A root module claiming to be aihost's plugin interface, version 2.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = BadModRef)))]
#[sabi(missing_field(panic))]
pub struct BadMod {
    /// Never called: the host refuses the library first.
    #[sabi(last_prefix_field)]
    pub name: extern "C" fn() -> RString,
}

impl RootModule for BadModRef {
    declare_root_module_statics! {BadModRef}
    const BASE_NAME: &'static str = "aihost_plugin";
    const NAME: &'static str = "aihost plugin";
    const VERSION_STRINGS: VersionStrings = VersionStrings::new("2.0.0");
}

extern "C" fn name() -> RString {
    "bad-version".into()
}

/// Exports the header under abi_stable's root-module symbol.
#[export_root_module]
pub fn get_library() -> BadModRef {
    BadMod { name }.leak_into_prefix()
}
