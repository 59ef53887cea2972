//! A department adapter written with the SDK: the city's own vaccination system publishes its
//! records as `health.vaccination.recorded` events.
//!
//! Run against a dev bus (`bash deploy/demo.sh`, or `kakehashi dev`):
//!
//! ```sh
//! cargo run -p kakehashi-adapter --example department_adapter -- nats://127.0.0.1:4222
//! ```
//!
//! Run it twice: the second run's acks say `duplicate`, because event ids derive from each
//! record's key and version — nothing is delivered twice.

use kakehashi_adapter::sdk::{Ack, Bus, PublishError, ToEvent};
use serde_json::json;

/// A row of the city's vaccination database, as the city's system has it.
struct DoseRecord {
    resident_no: &'static str,
    my_number: &'static str,
    name: &'static str,
    birth_date: &'static str,
    date: &'static str,
    vaccine: &'static str,
    dose: u32,
    lot: &'static str,
    updated_at: &'static str,
}

impl ToEvent for DoseRecord {
    fn event_type(&self) -> &str {
        "health.vaccination.recorded"
    }

    // One event stream per resident and dose; the key is the city's own resident number,
    // never the My Number.
    fn key(&self) -> String {
        format!("{}|{}", self.resident_no, self.dose)
    }

    // A corrected record has a later update time, hence a new event id.
    fn version(&self) -> String {
        self.updated_at.to_string()
    }

    fn payload(&self) -> serde_json::Value {
        json!({
            "person": {"my_number": self.my_number, "name": self.name, "birth_date": self.birth_date},
            "vaccination": {"date": self.date, "vaccine": self.vaccine, "dose_number": self.dose, "lot_number": self.lot},
            "municipality_code": "131130"
        })
    }
}

fn records() -> Vec<DoseRecord> {
    let base = DoseRecord {
        resident_no: "00010001",
        my_number: "258231856428",
        name: "山田　太郎",
        birth_date: "1975-04-01",
        date: "2024-10-01",
        vaccine: "コミナティ筋注",
        dose: 1,
        lot: "FN1234",
        updated_at: "2024-10-31T17:00:00+09:00",
    };
    vec![
        DoseRecord { ..base },
        DoseRecord { dose: 2, date: "2024-11-05", lot: "FN2001", ..base },
        DoseRecord { resident_no: "00010002", my_number: "063619562099", name: "山田　花子", ..base },
    ]
}

fn report(result: Result<Ack, PublishError>) {
    match result {
        Ok(ack) if ack.duplicate => {
            println!("{}  already on the bus (KH_INGRESS #{})", ack.event_id, ack.sequence)
        }
        Ok(ack) => println!("{}  published (KH_INGRESS #{})", ack.event_id, ack.sequence),
        // Refused: this record needs fixing (e.g. unknown_type); the others go on.
        Err(e @ PublishError::Refused { .. }) => println!("refused: {e}"),
        // Unavailable: the bus did not confirm within the retry policy; try again later.
        Err(e) => println!("not published: {e}"),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let url = std::env::args().nth(1).unwrap_or_else(|| "nats://127.0.0.1:4222".into());
    let bus = Bus::builder(url, "city-shibuya").connect().await?;
    let records = records();

    // One record, waiting for its confirmation.
    report(bus.publish_record(&records[0]).await);

    // Many records: up to 256 unconfirmed at once, confirmations in order.
    let mut pipeline = bus.pipeline(256);
    for record in &records {
        pipeline.send(bus.event(record)).await;
        while let Some(result) = pipeline.try_next() {
            report(result);
        }
    }
    while let Some(result) = pipeline.next().await {
        report(result);
    }
    Ok(())
}
