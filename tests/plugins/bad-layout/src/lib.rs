//! A test-only library that looks like an aihost plugin of the right version (1.0.0) but whose
//! root module has a different layout from aihost's `PluginMod`.
//!
//! The host finds and opens it, the version check passes, and abi_stable's layout check refuses
//! it (`AbiInstability`).

use abi_stable::{
    StableAbi, declare_root_module_statics, export_root_module, library::RootModule,
    prefix_type::PrefixTypeTrait, sabi_types::VersionStrings,
};

/// A root module with aihost's name and version but the wrong fields.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = BadLayoutModRef)))]
#[sabi(missing_field(panic))]
pub struct BadLayoutMod {
    /// Not a function, where aihost has `describe`.
    pub answer: u64,
    /// A function of the wrong signature, where aihost has `init`.
    #[sabi(last_prefix_field)]
    pub twice: extern "C" fn(u32) -> u32,
}

impl RootModule for BadLayoutModRef {
    declare_root_module_statics! {BadLayoutModRef}
    const BASE_NAME: &'static str = "aihost_plugin";
    const NAME: &'static str = "aihost plugin";
    const VERSION_STRINGS: VersionStrings = VersionStrings::new("1.0.0");
}

extern "C" fn twice(x: u32) -> u32 {
    x.wrapping_mul(2)
}

/// Exports the header under abi_stable's root-module symbol.
#[export_root_module]
pub fn get_library() -> BadLayoutModRef {
    BadLayoutMod { answer: 42, twice }.leak_into_prefix()
}
