//! A user's type that panics in its `Serialize` or `Deserialize` fails its own task alone: the
//! pool's thread never runs such code unguarded, so the pool keeps serving and shuts down
//! (DESIGN rule 9). Each scenario runs under every runtime.

mod common;

use common::{trials_under, RUNTIMES};
use offload::ProcessPool;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Encodes fine; its `Deserialize` panics, which happens in the parent, for a result.
#[derive(Debug)]
pub struct PanicsWhenDecoded;

impl Serialize for PanicsWhenDecoded {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(1)
    }
}

impl<'de> Deserialize<'de> for PanicsWhenDecoded {
    fn deserialize<D: Deserializer<'de>>(_: D) -> Result<Self, D::Error> {
        panic!("PanicsWhenDecoded refuses to be decoded")
    }
}

/// Its `Serialize` panics: in the worker for a result, in the caller for an argument.
#[derive(Debug)]
pub struct PanicsWhenEncoded;

impl Serialize for PanicsWhenEncoded {
    fn serialize<S: Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        panic!("PanicsWhenEncoded refuses to be encoded")
    }
}

impl<'de> Deserialize<'de> for PanicsWhenEncoded {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        u8::deserialize(d).map(|_| PanicsWhenEncoded)
    }
}

fn make_undecodable() -> PanicsWhenDecoded {
    PanicsWhenDecoded
}

fn make_unencodable() -> PanicsWhenEncoded {
    PanicsWhenEncoded
}

fn take(_: PanicsWhenEncoded) -> u8 {
    0
}

fn double(x: u64) -> u64 {
    x * 2
}

/// What must hold after each bad value: the pool serves on both workers, then shuts down.
async fn still_serves(pool: &ProcessPool) {
    let tasks: Vec<_> = (0..4).map(|x| pool.spawn(double, x)).collect();
    for (x, task) in tasks.into_iter().enumerate() {
        assert_eq!(task.await.unwrap(), 2 * x as u64);
    }
}

async fn a_result_whose_deserialize_panics_fails_its_task_alone() {
    let pool = ProcessPool::new(2).unwrap();
    let neighbour = pool.spawn(double, 21);
    let err = pool.spawn(make_undecodable, ()).await.unwrap_err();
    assert!(err.is_codec(), "{err}");
    assert!(err.to_string().contains("refuses to be decoded"), "{err}");
    assert_eq!(neighbour.await.unwrap(), 42);
    still_serves(&pool).await;
    assert_eq!(pool.stats().failed, 1);
    pool.shutdown().await;
}

async fn a_result_whose_serialize_panics_in_the_worker_fails_its_task_alone() {
    let pool = ProcessPool::new(2).unwrap();
    let mut task = pool.spawn(make_unencodable, ());
    let err = (&mut task).await.unwrap_err();
    assert!(err.is_codec(), "{err}");
    assert!(err.to_string().contains("refuses to be encoded"), "{err}");
    let pid = task.pid().unwrap();
    still_serves(&pool).await;
    assert!(common::alive(pid), "the worker lives on");
    assert_eq!(pool.stats().replaced, 0);
    pool.shutdown().await;
}

async fn an_argument_whose_serialize_panics_fails_its_task_alone() {
    let pool = ProcessPool::new(2).unwrap();
    let task = pool.spawn(take, PanicsWhenEncoded);
    assert_eq!(task.status(), "failed");
    let err = task.await.unwrap_err();
    assert!(err.is_codec(), "{err}");
    still_serves(&pool).await;
    pool.shutdown().await;
}

async fn a_map_item_whose_result_cannot_be_decoded_fails_alone() {
    let pool = ProcessPool::new(2).unwrap();
    let results = pool
        .map(
            |i: u32| (i != 3).then_some(i).ok_or(PanicsWhenDecoded),
            0..8,
        )
        .await;
    for (i, result) in results.iter().enumerate() {
        match i {
            3 => assert!(result.as_ref().unwrap_err().is_codec()),
            _ => assert_eq!(result.as_ref().unwrap().as_ref().unwrap(), &(i as u32)),
        }
    }
    still_serves(&pool).await;
    pool.shutdown().await;
}

/// Encodes as its number, except 2, whose `Serialize` panics; decodes as any number, except
/// 4, whose `Deserialize` panics (in the worker, for an argument).
#[derive(Debug)]
pub struct Touchy(u8);

impl Serialize for Touchy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        assert_ne!(self.0, 2, "Touchy 2 refuses to be encoded");
        s.serialize_u8(self.0)
    }
}

impl<'de> Deserialize<'de> for Touchy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u8::deserialize(d)?;
        assert_ne!(n, 4, "Touchy 4 refuses to be decoded");
        Ok(Touchy(n))
    }
}

fn touch(t: Touchy) -> u8 {
    t.0
}

async fn map_items_whose_serde_panics_fail_alone() {
    let pool = ProcessPool::new(2).unwrap();
    let results = pool.map(touch, (0..8).map(Touchy)).await;
    for (i, result) in results.iter().enumerate() {
        match i {
            2 | 4 => {
                let err = result.as_ref().unwrap_err();
                assert!(err.is_codec(), "{i}: {err}");
                assert!(err.to_string().contains(&format!("Touchy {i}")), "{err}");
            }
            _ => assert_eq!(result.as_ref().unwrap(), &(i as u8)),
        }
    }
    still_serves(&pool).await;
    pool.shutdown().await;
}

fn main() {
    let scenarios = scenarios![
        a_result_whose_deserialize_panics_fails_its_task_alone,
        a_result_whose_serialize_panics_in_the_worker_fails_its_task_alone,
        an_argument_whose_serialize_panics_fails_its_task_alone,
        a_map_item_whose_result_cannot_be_decoded_fails_alone,
        map_items_whose_serde_panics_fail_alone,
    ];
    common::main_with(trials_under(&RUNTIMES, &scenarios));
}
