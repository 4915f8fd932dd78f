import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;

import org.apache.spark.api.java.JavaRDD;
import org.apache.spark.api.java.JavaSparkContext;
import org.apache.spark.sql.SparkSession;
import scala.Tuple2;

/**
 * Reference latencies of Spark's smallest jobs, measured after warm-up and excluding the session
 * start: a single-stage job of TASKS tasks (parallelize + count), and a two-stage job
 * (TASKS map tasks, reduceByKey into TASKS partitions, collect).
 *
 * <p>Usage: {@code TinyJobs [TASKS] [--warmup 20] [--jobs 50] [--master local[2]]}. Prints one line
 * per job kind with the median, 10th and 90th percentile and mean latency in milliseconds.
 */
public final class TinyJobs {
    public static void main(String[] argv) {
        double jvm = BenchSupport.jvmStartupSeconds();
        BenchSupport.Args args = new BenchSupport.Args(argv);
        int tasks = args.getInt(0, 10);
        int warmup = Integer.parseInt(args.options.getOrDefault("warmup", "20"));
        int jobs = Integer.parseInt(args.options.getOrDefault("jobs", "50"));

        long t0 = System.nanoTime();
        SparkSession spark = BenchSupport.session("TinyJobs", args);
        JavaSparkContext jsc = JavaSparkContext.fromSparkContext(spark.sparkContext());
        double session = BenchSupport.secondsSince(t0);

        List<Integer> elems = new ArrayList<>();
        for (int x = 0; x < 100 * tasks; x++) {
            elems.add(x);
        }
        final int n = tasks;

        double[] single = measure(warmup, jobs, () -> {
            long c = jsc.parallelize(elems, n).count();
            if (c != elems.size()) {
                throw new IllegalStateException("count " + c);
            }
        });
        double[] twoStage = measure(warmup, jobs, () -> {
            JavaRDD<Integer> rdd = jsc.parallelize(elems, n);
            List<Tuple2<Integer, Long>> out =
                    rdd.mapToPair(x -> new Tuple2<>(x % n, 1L)).reduceByKey(Long::sum, n).collect();
            if (out.size() != n) {
                throw new IllegalStateException("groups " + out.size());
            }
        });
        report("single_stage", tasks, single, jvm, session);
        report("two_stage_reduce_by_key", tasks, twoStage, jvm, session);
        spark.stop();
    }

    private static double[] measure(int warmup, int jobs, Runnable job) {
        for (int i = 0; i < warmup; i++) {
            job.run();
        }
        double[] ms = new double[jobs];
        for (int i = 0; i < jobs; i++) {
            long t = System.nanoTime();
            job.run();
            ms[i] = (System.nanoTime() - t) / 1e6;
        }
        Arrays.sort(ms);
        return ms;
    }

    private static void report(String job, int tasks, double[] ms, double jvm, double session) {
        double mean = Arrays.stream(ms).average().orElse(Double.NaN);
        BenchSupport.report("TinyJobs", "job", job, "tasks", tasks, "jobs", ms.length,
                "median_ms", ms[ms.length / 2], "p10_ms", ms[ms.length / 10],
                "p90_ms", ms[(int) (ms.length * 0.9)], "mean_ms", mean,
                "jvm_start_s", jvm, "session_start_s", session);
    }
}
