import java.util.ArrayList;
import java.util.List;

import org.apache.spark.HashPartitioner;
import org.apache.spark.api.java.JavaPairRDD;
import org.apache.spark.api.java.JavaRDD;
import org.apache.spark.api.java.JavaSparkContext;
import org.apache.spark.sql.SparkSession;
import scala.Tuple2;

/**
 * Tiny iterative jobs, after Drizzle's running-sum example: a cached input of TASKS partitions
 * feeds, in each of ITERS iterations, one job that maps every element to (element mod R, element
 * + offset), reduces by key through a shuffle into R partitions, zips the sums with the cached
 * state of the previous iteration (one running sum per key) and caches the new state, then
 * collects it. Each iteration is therefore a two-stage job (TASKS map tasks, R result tasks).
 *
 * <p>Spark has no group scheduling: every job is scheduled on its own (group=1). The session start
 * and the building and caching of the input happen before the clock starts. The values summed
 * over all iterations are exactly 1..ITERS*N, so the final state is checked against T(T+1)/2.
 *
 * <p>Usage: {@code RunningSum ITERS TASKS [TRIALS] [--warmup-trials W] [--reducers R]
 * [--elems-per-task N] [--master local[2]]}. TRIALS defaults to 3, W to 2, R to TASKS, N to 1000.
 * Prints one line per trial; the W warm-up trials (JIT compilation) carry {@code warmup=1}.
 */
public final class RunningSum {
    public static void main(String[] argv) {
        double jvm = BenchSupport.jvmStartupSeconds();
        BenchSupport.Args args = new BenchSupport.Args(argv);
        int iters = Integer.parseInt(args.get(0, "ITERS"));
        int tasks = Integer.parseInt(args.get(1, "TASKS"));
        int trials = args.getInt(2, 3);
        int warmups = Integer.parseInt(args.options.getOrDefault("warmup-trials", "2"));
        int reducers = Integer.parseInt(args.options.getOrDefault("reducers", String.valueOf(tasks)));
        long perTask = Long.parseLong(args.options.getOrDefault("elems-per-task", "1000"));
        long numElems = perTask * tasks;

        long t0 = System.nanoTime();
        SparkSession spark = BenchSupport.session("RunningSum", args);
        JavaSparkContext jsc = JavaSparkContext.fromSparkContext(spark.sparkContext());
        double session = BenchSupport.secondsSince(t0);

        List<Long> elems = new ArrayList<>();
        for (long x = 1; x <= numElems; x++) {
            elems.add(x);
        }
        List<Integer> keys = new ArrayList<>();
        for (int k = 0; k < reducers; k++) {
            keys.add(k);
        }

        for (int trial = 1 - warmups; trial <= trials; trial++) {
            HashPartitioner partitioner = new HashPartitioner(reducers);
            JavaRDD<Long> data = jsc.parallelize(elems, tasks).cache();
            JavaPairRDD<Integer, Long> state =
                    jsc.parallelize(keys, reducers).mapToPair(k -> new Tuple2<>(k, 0L)).cache();
            data.count();
            state.count();
            List<JavaPairRDD<Integer, Long>> states = new ArrayList<>();

            long begin = System.nanoTime();
            List<Tuple2<Integer, Long>> sums = null;
            for (int i = 0; i < iters; i++) {
                final long offset = (long) i * numElems;
                JavaPairRDD<Integer, Long> increments = data
                        .mapToPair(x -> new Tuple2<>((int) ((x + offset) % reducers), x + offset))
                        .reduceByKey(partitioner, Long::sum);
                // Key k lands in partition k on both sides, one pair per partition, so zip aligns.
                JavaPairRDD<Integer, Long> next = increments.zip(state).mapToPair(t -> {
                    if (!t._1._1.equals(t._2._1)) {
                        throw new IllegalStateException("misaligned state " + t);
                    }
                    return new Tuple2<>(t._2._1, t._2._2 + t._1._2);
                });
                next.cache();
                sums = next.collect();
                state = next;
                states.add(next);
            }
            double totalMs = (System.nanoTime() - begin) / 1e6;

            long total = 0;
            for (Tuple2<Integer, Long> kv : sums) {
                total += kv._2;
            }
            long t = iters * numElems;
            boolean ok = total == t * (t + 1) / 2;
            BenchSupport.report("RunningSum", "trial", trial, "warmup", trial < 1 ? 1 : 0, "iters", iters, "tasks", tasks,
                    "reducers", reducers, "group", 1, "total_ms", totalMs, "per_iter_ms", totalMs / iters,
                    "result_ok", ok, "jvm_start_s", jvm, "session_start_s", session);
            for (JavaPairRDD<Integer, Long> s : states) {
                s.unpersist(false);
            }
            data.unpersist(false);
            if (!ok) {
                System.err.println("RunningSum: wrong final sum " + total + ", expected " + t * (t + 1) / 2);
                System.exit(1);
            }
        }
        spark.stop();
    }
}
