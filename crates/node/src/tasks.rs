//! The one task type: a closure that runs on the libuv thread pool and returns a core result,
//! whose value becomes the promise's value and whose error becomes a JS error with a `code`.

use crate::errors::js_error;
use napi::bindgen_prelude::*;
use napi::{Env, Task};

/// Work for the libuv pool. `T` is already the JS-facing value (a `#[napi(object)]`, a class, a
/// number, `()`): the conversion from core types happens on the pool, off the JS thread.
pub struct Work<T> {
    job: Option<Box<dyn FnOnce() -> soft_cluster_core::Result<T> + Send>>,
}

impl<T> Work<T> {
    pub fn new(job: impl FnOnce() -> soft_cluster_core::Result<T> + Send + 'static) -> AsyncTask<Self>
    where
        T: ToNapiValue + TypeName + Send + 'static,
    {
        AsyncTask::new(Work { job: Some(Box::new(job)) })
    }
}

impl<T: ToNapiValue + TypeName + Send + 'static> Task for Work<T> {
    type Output = soft_cluster_core::Result<T>;
    type JsValue = T;

    fn compute(&mut self) -> Result<Self::Output> {
        let job = self.job.take().ok_or_else(|| Error::from_reason("task ran twice"))?;
        Ok(job())
    }

    fn resolve(&mut self, env: Env, output: Self::Output) -> Result<T> {
        output.map_err(|e| js_error(&env, e))
    }
}
