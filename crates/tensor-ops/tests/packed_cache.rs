//! The packed-kernel cache's byte count, in a process of its own: the cache is global, and
//! the unit tests' frozen kernels would fill and evict it concurrently.

use candle_core::{Device, Result, Tensor};
use oneiro_tensor_ops::{Conv2dParams, clear_packed_cache, conv2d, packed_cache_bytes};

#[test]
fn cache_bytes_grow_with_a_cached_kernel_and_clear_to_zero() -> Result<()> {
    // Many input and output channels on a small map: the channels-last product, whose
    // packed kernel (taps · cin rows × cout columns) a frozen kernel caches.
    let (cin, cout) = (96, 80);
    let x = Tensor::randn(0f32, 1.0, (1, cin, 6, 7), &Device::Cpu)?;
    let w = Tensor::randn(0f32, 1.0, (cout, cin, 3, 3), &Device::Cpu)?;
    let p = Conv2dParams::same(3);
    let packed = 9 * cin * cout * size_of::<f32>();
    assert_eq!(packed_cache_bytes(), 0);
    // A kernel is cached the second time it is packed.
    let y1 = conv2d(&x, &w, p)?.flatten_all()?.to_vec1::<f32>()?;
    assert_eq!(packed_cache_bytes(), 0, "cached after one call");
    let y2 = conv2d(&x, &w, p)?.flatten_all()?.to_vec1::<f32>()?;
    assert_eq!(packed_cache_bytes(), packed);
    // The cached form serves the next call with the same result.
    let y3 = conv2d(&x, &w, p)?.flatten_all()?.to_vec1::<f32>()?;
    assert_eq!(packed_cache_bytes(), packed);
    assert!(y1 == y2 && y2 == y3);
    clear_packed_cache();
    assert_eq!(packed_cache_bytes(), 0);
    // Cleared, the kernel starts over: packed once without caching, then cached again.
    let y4 = conv2d(&x, &w, p)?.flatten_all()?.to_vec1::<f32>()?;
    assert_eq!(packed_cache_bytes(), 0);
    assert_eq!(y1, y4);
    Ok(())
}
