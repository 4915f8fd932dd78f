//! `pipe`: records through an external command, one per line, per partition.

use ember_core::Error;
use proptest::prelude::*;

use super::common::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    /// Through `cat`, every partition comes back as its records' lines, in order.
    #[test]
    fn cat_returns_each_partition_as_lines(data in prop::collection::vec(-1000i64..1000, 0..200), parts in 1usize..5) {
        for ctx in both() {
            let rdd = ctx.parallelize(data.clone(), parts);
            let piped = rdd.pipe(&["cat"], &[]).unwrap().glom().collect().unwrap();
            let expected: Vec<Vec<String>> =
                rdd.glom().collect().unwrap().into_iter().map(|p| p.iter().map(|x| x.to_string()).collect()).collect();
            prop_assert_eq!(piped, expected);
        }
    }
}

#[test]
fn commands_transform_count_and_see_their_environment() {
    let ctx = ctx();
    let words = ctx.parallelize(vec!["alpha".to_string(), "beta".into(), "gamma".into()], 2);
    assert_eq!(words.pipe(&["tr", "a-z", "A-Z"], &[]).unwrap().collect().unwrap(), ["ALPHA", "BETA", "GAMMA"]);
    // One command per partition.
    assert_eq!(
        words.pipe(&["wc", "-l"], &[]).unwrap().map(|l: String| l.trim().to_string()).collect().unwrap(),
        ["1", "2"]
    );
    let env = words.pipe(&["sh", "-c", "echo \"$GREETING\""], &[("GREETING", "hi")]).unwrap();
    assert_eq!(env.collect().unwrap(), ["hi", "hi"]);
    // A command that stops reading early is fine.
    let many = ctx.parallelize((0..200_000u32).collect(), 1);
    assert_eq!(many.pipe(&["head", "-n", "2"], &[]).unwrap().collect().unwrap(), ["0", "1"]);
}

#[test]
fn a_failing_or_missing_command_fails_the_job_naming_it() {
    let ctx = ctx();
    let rdd = ctx.parallelize(vec![1u8, 2, 3], 1);
    let err = rdd.pipe(&["sh", "-c", "echo oops >&2; exit 3"], &[]).unwrap().collect().unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("sh -c") && msg.contains("oops") && msg.contains('3'), "{msg}");
    let err = rdd.pipe(&["no-such-command-ember"], &[]).unwrap().collect().unwrap_err();
    assert!(err.to_string().contains("no-such-command-ember"), "{err}");
    assert!(matches!(rdd.pipe(&[], &[]), Err(Error::InvalidArgument(_))));
}
