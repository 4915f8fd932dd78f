import org.apache.spark.api.java.JavaSparkContext;
import org.apache.spark.sql.SparkSession;
import scala.Tuple2;

/**
 * Sort with the Java RDD API: textFile, key each line by the text before its first tab,
 * sortByKey (range partitioner sampled from the input, one output partition per input split),
 * saveAsTextFile of the original {@code KEY<TAB>VALUE} lines.
 *
 * <p>Usage: {@code SortRdd INPUT OUTPUT_DIR [--master local[2]]}
 */
public final class SortRdd {
    public static void main(String[] argv) {
        double jvm = BenchSupport.jvmStartupSeconds();
        BenchSupport.Args args = new BenchSupport.Args(argv);
        String input = args.get(0, "INPUT");
        String output = args.get(1, "OUTPUT_DIR");

        long t0 = System.nanoTime();
        SparkSession spark = BenchSupport.session("SortRdd", args);
        JavaSparkContext jsc = JavaSparkContext.fromSparkContext(spark.sparkContext());
        double session = BenchSupport.secondsSince(t0);

        long t1 = System.nanoTime();
        jsc.textFile(input)
                .mapToPair(line -> {
                    int tab = line.indexOf('\t');
                    return new Tuple2<>(tab < 0 ? line : line.substring(0, tab), line);
                })
                .sortByKey(true)
                .values()
                .saveAsTextFile(output);
        double job = BenchSupport.secondsSince(t1);

        BenchSupport.report("SortRdd", "api", "rdd", "jvm_start_s", jvm, "session_start_s", session,
                "job_s", job);
        spark.stop();
    }
}
