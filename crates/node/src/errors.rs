//! The one conversion of core errors into JS errors.

use napi::bindgen_prelude::*;
use napi::Env;

/// A JS `Error` whose `code` is the core's stable code (`ERR_INVALID_CONFIG`, `ERR_DEVICE`, ...).
pub fn js_error(env: &Env, err: soft_cluster_core::Error) -> Error {
    let build = || -> Result<Error> {
        let mut obj = env.create_error(Error::new(Status::GenericFailure, err.to_string()))?;
        obj.set_named_property("code", err.code())?;
        Ok(Error::from(obj.to_unknown()))
    };
    build().unwrap_or_else(|e| e)
}

/// An `ERR_INVALID_INPUT` core error about `what`.
pub fn invalid_input(what: &str, problem: &str) -> soft_cluster_core::Error {
    soft_cluster_core::Error::InvalidInput { what: what.into(), problem: problem.into() }
}
