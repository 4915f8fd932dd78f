import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;

import org.apache.spark.api.java.JavaPairRDD;
import org.apache.spark.api.java.JavaSparkContext;
import org.apache.spark.sql.SparkSession;
import scala.Tuple2;

/**
 * Word count with the Java RDD API: textFile, split on Unicode whitespace, reduceByKey (with its
 * map-side combine), saveAsTextFile of {@code word<TAB>count} lines.
 *
 * <p>Usage: {@code WordCountRdd INPUT OUTPUT_DIR [--master local[2]]}
 */
public final class WordCountRdd {
    public static void main(String[] argv) {
        double jvm = BenchSupport.jvmStartupSeconds();
        BenchSupport.Args args = new BenchSupport.Args(argv);
        String input = args.get(0, "INPUT");
        String output = args.get(1, "OUTPUT_DIR");

        long t0 = System.nanoTime();
        SparkSession spark = BenchSupport.session("WordCountRdd", args);
        JavaSparkContext jsc = JavaSparkContext.fromSparkContext(spark.sparkContext());
        double session = BenchSupport.secondsSince(t0);

        long t1 = System.nanoTime();
        JavaPairRDD<String, Long> counts = jsc.textFile(input)
                .flatMapToPair(WordCountRdd::words)
                .reduceByKey(Long::sum);
        counts.map(t -> t._1 + "\t" + t._2).saveAsTextFile(output);
        double job = BenchSupport.secondsSince(t1);

        BenchSupport.report("WordCountRdd", "api", "rdd", "jvm_start_s", jvm, "session_start_s", session,
                "job_s", job, "input_partitions", jsc.textFile(input).getNumPartitions());
        spark.stop();
    }

    static Iterator<Tuple2<String, Long>> words(String line) {
        List<Tuple2<String, Long>> out = new ArrayList<>(16);
        int n = line.length();
        int i = 0;
        while (i < n) {
            while (i < n && BenchSupport.isUnicodeWhitespace(line.charAt(i))) {
                i++;
            }
            int start = i;
            while (i < n && !BenchSupport.isUnicodeWhitespace(line.charAt(i))) {
                i++;
            }
            if (i > start) {
                out.add(new Tuple2<>(line.substring(start, i), 1L));
            }
        }
        return out.iterator();
    }
}
