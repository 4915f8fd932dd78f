use std::time::Instant;
use ember::prelude::*;
fn main() {
    let ctx = Context::new(EmberConf::new().master("local[2]").unwrap()).unwrap();
    let r = ctx.parallelize((0..10_000u64).collect::<Vec<_>>(), 10).cache();
    r.count().unwrap();
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..100 { r.count().unwrap(); }
        println!("count job: {:.3} ms", t.elapsed().as_secs_f64() * 10.0);
        let t = Instant::now();
        for _ in 0..100 { r.map(|x| (x % 10, x)).reduce_by_key(|a, b| a + b, Some(10)).count().unwrap(); }
        println!("reduce job: {:.3} ms", t.elapsed().as_secs_f64() * 10.0);
    }
}
