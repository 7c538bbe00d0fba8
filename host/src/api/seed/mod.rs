//! The routes of the Python service aihost replaces, kept with the same paths and bodies so its
//! clients keep working unchanged (README, "ComfyUI" and "FaceFusion").
//!
//! - `comfyui.rs`: `POST /api/tasks/create` (both seed bodies), the ComfyUI queue, stats and
//!   interrupt routes, and beside them the workflow-template routes (`/api/workflows`), which
//!   share the same template and op machinery.
//! - `faceswap.rs`: `POST /api/faceswap/create`.
//!
//! Each maps to a task of a registered type or to a plugin op; nothing here talks to an engine.
//! aihost's own API (`POST /api/tasks` and the rest) lives in the sibling modules.

pub(crate) mod comfyui;
pub(crate) mod faceswap;
